"""Protocol-neutral HTTP plumbing: the shim's routes from `google.api.http` annotations, bodies, NDJSON streams, the aiohttp listener."""
