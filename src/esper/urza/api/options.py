"""Authentication and limits of Urza's API."""

from dataclasses import dataclass

from esper.urza.api.limits import RateLimit


@dataclass(frozen=True)
class ApiOptions:
    """How the API authenticates and limits requests.

    Attributes:
        token: The bearer token, or None when writes are open.
        writes_open: Accept writes without a token (only when ``token`` is None).
        require_auth_for_reads: Demand the token for reads too.
        max_upload_bytes: Largest artifact bundle accepted.
        presign_seconds: Validity of presigned download URLs.
        max_json_bytes: Largest JSON request body accepted (413 beyond it).
        rate_limit: Requests per client, or None for no limit.
    """

    token: str | None
    writes_open: bool
    require_auth_for_reads: bool = False
    max_upload_bytes: int = 512 * 1024 * 1024
    presign_seconds: int = 900
    max_json_bytes: int = 1024 * 1024
    rate_limit: RateLimit | None = None

    def __post_init__(self) -> None:
        """Refuse contradictory options."""
        if self.token is None and not self.writes_open:
            raise ValueError(
                "Urza without a token must run with open writes (loopback only); configure "
                "ESPER_URZA_AUTH_TOKEN or ESPER_URZA_AUTH_TOKEN_FILE"
            )
        if self.token is not None and self.writes_open:
            raise ValueError("open writes contradict a configured token")
