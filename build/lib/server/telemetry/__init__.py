"""Watching the server: the access log, metrics and tracing.

`telemetry.Telemetry` puts them together for the App, with the API-key checks of
`server.security`; the interceptors apply to gRPC calls and to HTTP requests
dispatched in process alike.
"""
