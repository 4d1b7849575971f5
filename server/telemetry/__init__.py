"""Operating the server: API-key auth, TLS, the access log, metrics and tracing.

`telemetry.Telemetry` puts them together for the App; the interceptors apply
to gRPC calls and to HTTP requests dispatched in process alike.
"""
