"""Fixtures of the storage tests: a moto S3 server, buckets and stores built from settings."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from server.storage.factory import open_object_store
from server.storage.store import ObjectStore
from tests.support.s3_servers import AWS_ENV, MotoServer, new_bucket, s3_settings


@pytest.fixture(scope="module")
def aws_env() -> Iterator[None]:
    """Dummy AWS credentials in the environment (boto3's chain), restored afterwards."""
    saved = {name: os.environ.get(name) for name in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module")
def moto(aws_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """One moto S3 server per module, on a free loopback port."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(moto: MotoServer) -> str:
    """A fresh, empty bucket."""
    return new_bucket(moto)


@pytest.fixture
def make_store(moto: MotoServer) -> Iterator[Callable[..., ObjectStore]]:
    """Build S3 stores from settings (against moto unless `s3_endpoint_url` is given); closed after."""
    stores: list[ObjectStore] = []

    def make(bucket: str, **overrides: object) -> ObjectStore:
        endpoint = str(overrides.pop("s3_endpoint_url", moto.endpoint_url))
        store = open_object_store(s3_settings(endpoint, bucket, **overrides))
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()
