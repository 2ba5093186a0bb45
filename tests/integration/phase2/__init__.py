"""Phase 2 with real parts: a standard PyTorch model grows a Validated kernel served by Urza."""
