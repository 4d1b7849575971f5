"""Python client of the serving backend: a library (`Client`) and a CLI (`python -m client`).

from client import Client

with Client("localhost:50051", timeout=10) as client:
    result = client.predict_image("digits", "digit_3.png", top_k=3)
    print(result.classifications[0][0].label)
"""

from __future__ import annotations

from client.errors import ClientError
from client.library import Client
from client.results import ClassScore, PredictResult, StreamResult

__all__ = ["ClassScore", "Client", "ClientError", "PredictResult", "StreamResult"]
