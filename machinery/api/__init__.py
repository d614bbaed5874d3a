"""Generated gRPC stubs for the kubelite API (see proto/generate.py); do not edit."""
