from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def client():
    """One 2-worker LocalCluster (one thread each) for the batch tests."""
    pytest.importorskip("distributed", reason="the scale extra (dask[array,distributed]) is not installed")
    from biomip import batch

    c = batch.make_client("local:2", threads_per_worker=1)
    yield c
    cluster = c.cluster
    c.close()
    cluster.close()
