"""TensorFlow Serving's APIs (gRPC PredictionService/ModelService and its REST API), so its clients work unchanged."""
