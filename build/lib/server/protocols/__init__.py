"""One folder per API the server speaks (its gRPC servicer, its REST routes, its codecs), over the one Predictor core."""
