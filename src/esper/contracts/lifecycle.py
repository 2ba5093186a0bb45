"""Explicit state machines shared by the seed lifecycle and the kernel phase.

A transition table is written out in full as data, so it can be read, documented and tested
exhaustively; anything not listed is illegal and raises :class:`IllegalTransitionError`.
"""

from collections.abc import Mapping
from enum import StrEnum
from typing import Generic, TypeVar

StateT = TypeVar("StateT", bound=StrEnum)


class IllegalTransitionError(ValueError):
    """Raised when a state machine is asked to make a move its table does not allow."""

    def __init__(self, machine: str, source: str, target: str, allowed: list[str]) -> None:
        """Build the error.

        Args:
            machine: Name of the state machine (for example ``SeedStage``).
            source: The current state.
            target: The state that was asked for.
            allowed: The states reachable from ``source``.
        """
        allowed_text = ", ".join(allowed) if allowed else "none (terminal state)"
        super().__init__(
            f"{machine}: illegal transition {source} -> {target}; allowed from {source}: "
            f"{allowed_text}"
        )
        self.machine = machine
        self.source = source
        self.target = target


class TransitionTable(Generic[StateT]):
    """An immutable table of legal moves between the members of one enum.

    Args:
        name: Name used in error messages.
        moves: For each state, the states it may move to. Every member of the enum must be a
            key, so that a newly added state cannot be forgotten.
    """

    def __init__(self, name: str, moves: Mapping[StateT, frozenset[StateT]]) -> None:
        """Build and check the table (see the class docstring for the arguments)."""
        members = {type(state) for state in moves}
        if len(members) != 1:
            raise ValueError(f"{name}: a transition table covers exactly one enum")
        enum_type = members.pop()
        missing = [state.value for state in enum_type if state not in moves]
        if missing:
            raise ValueError(f"{name}: transition table lacks rows for {missing}")
        self.name = name
        self._moves: dict[StateT, frozenset[StateT]] = dict(moves)

    def allowed(self, source: StateT) -> frozenset[StateT]:
        """Return the states reachable in one move from ``source``.

        Args:
            source: The current state.

        Returns:
            The legal next states (empty for a terminal state).
        """
        return self._moves[source]

    def is_legal(self, source: StateT, target: StateT) -> bool:
        """Tell whether ``source -> target`` is a legal move.

        Args:
            source: The current state.
            target: The proposed next state.

        Returns:
            True when the table lists the move.
        """
        return target in self._moves[source]

    def check(self, source: StateT, target: StateT) -> StateT:
        """Validate a move and return the new state.

        Args:
            source: The current state.
            target: The proposed next state.

        Returns:
            ``target``, when the move is legal.

        Raises:
            IllegalTransitionError: When the table does not list the move.
        """
        if not self.is_legal(source, target):
            allowed = sorted(state.value for state in self._moves[source])
            raise IllegalTransitionError(self.name, source.value, target.value, allowed)
        return target

    def is_terminal(self, state: StateT) -> bool:
        """Tell whether no move leaves ``state``.

        Args:
            state: The state to inspect.

        Returns:
            True when ``state`` has no outgoing moves.
        """
        return not self._moves[state]

    def rows(self) -> dict[StateT, frozenset[StateT]]:
        """Return a copy of the whole table, for documentation and tests.

        Returns:
            Mapping from each state to its legal next states.
        """
        return dict(self._moves)
