"""Unit tests of Urza's HTTP client (httpx.MockTransport, no server)."""
