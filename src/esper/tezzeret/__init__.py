"""Tezzeret, the blueprint compiler: blueprint + target -> kernel artifact bundle."""
