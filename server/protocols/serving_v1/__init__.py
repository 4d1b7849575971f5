"""The server's own API (serving.v1): Predict, StreamPredict, Task and Upload.

Its REST routes come from the protos' annotations (server/http).
"""
