"""What the server and the client both speak: the serving.v1 `Tensor` codec.

Imports neither, so `import client` runs no server code.
"""
