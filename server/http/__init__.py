"""Protocol-neutral HTTP plumbing.

The shim's routes from `google.api.http` annotations, bodies, NDJSON streams, the aiohttp listener.
"""
