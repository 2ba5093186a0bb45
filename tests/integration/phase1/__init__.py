"""Phase 1 with real parts: POST a blueprint, get a Validated kernel by itself."""
