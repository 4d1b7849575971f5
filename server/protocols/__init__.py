"""One folder per API the server speaks.

Each holds its gRPC servicer, its REST routes and its codecs, over the one Predictor core.
"""
