"""What tests start and share.

Real servers (the server, redis-server, moto, webhook receivers) on free loopback ports, fakes, fixtures.
"""
