from __future__ import annotations

import hashlib

from berth_api.serving.cache import cache_key, decode_output, encode_output, row_digest
from berth_api.serving.predictor import ModelOutput
from berth_common.keys import RedisKeys


def test_key_is_namespaced_by_model_and_version() -> None:
    key = cache_key(RedisKeys("berth"), "iris", "1", [5.1, 3.5])
    prefix, kind, name, version, digest = key.split(":")
    assert (prefix, kind, name, version) == ("berth", "cache", "iris", "1")
    assert len(digest) == 32
    assert cache_key(RedisKeys("berth"), "iris", "2", [5.1, 3.5]) != key
    assert cache_key(RedisKeys("berth"), "iris", "1", [5.1, 3.6]) != key


def test_same_row_same_key() -> None:
    assert cache_key(RedisKeys("p"), "m", "1", [1.0, "a"]) == cache_key(
        RedisKeys("p"), "m", "1", [1.0, "a"]
    )


def test_output_roundtrip() -> None:
    output = ModelOutput("setosa", {"setosa": 0.9, "versicolor": 0.1})
    assert decode_output(encode_output(output)) == output
    assert decode_output(encode_output(ModelOutput(2.5, None))) == ModelOutput(2.5, None)


def test_foreign_values_are_misses() -> None:
    assert decode_output(None) is None
    assert decode_output(b"not json") is None
    assert decode_output(b'{"x": 1}') is None


def test_a_row_digest_is_the_hash_of_its_canonical_text() -> None:
    # Pinned: the digests make idempotency fingerprints, which a retry after an upgrade must match.
    canonical = '[5.1,1e+16,-0.0,3,true,"é \\"x\\"\\n"]'
    expected = hashlib.sha256(canonical.encode()).hexdigest()[:32]
    assert row_digest([5.1, 1e16, -0.0, 3, True, 'é "x"\n']) == expected
