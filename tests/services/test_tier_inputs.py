"""Image decoding: shapes, scales, NaN/inf, ranges; every rejection names the field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from services.tier.errors import ApiError
from services.tier.inputs import decode_binary, decode_image_values, decode_json


def test_uint8_integers_stay_exact() -> None:
    img = np.arange(784) % 256
    out = decode_image_values(img.tolist())
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    assert np.array_equal(out.reshape(-1), img.astype(np.uint8))


def test_unit_floats_and_2d() -> None:
    img = (np.arange(784) / 783.0).reshape(28, 28)
    out = decode_image_values(img.tolist())
    assert out.dtype == np.float32
    assert np.allclose(out, img, atol=1e-7)


def test_uint8_scale_forced() -> None:
    out = decode_image_values([1] * 784, scale="uint8")
    assert out.dtype == np.uint8 and int(out[0, 0]) == 1


@pytest.mark.parametrize(
    ("image", "field"),
    [
        ([0.0] * 783, "image"),
        ([[0.0] * 28] * 27, "image"),
        ([[0.0] * 28] * 27 + [[0.0] * 27], "image"),
        ([0.0] * 5 + [-1.0] + [0.0] * 778, "image[5]"),
        ([[0.0] * 28] * 3 + [[0.0] * 4 + [256] + [0.0] * 23] + [[0.0] * 28] * 24, "image[3][4]"),
        ([0.0] * 7 + [float("nan")] + [0.0] * 776, "image[7]"),
        ([float("inf")] + [0.0] * 783, "image[0]"),
        (["a"] * 784, "image"),
        ([True] * 784, "image"),
        ([True, 0] + [0] * 782, "image[0]"),  # numpy would read it as integers
        ([[0] * 28] * 2 + [[0, 1, False] + [0] * 25] + [[0] * 28] * 25, "image[2][2]"),
        ("pixels", "image"),
        ([10**30] * 784, "image"),
    ],
)
def test_bad_images_name_the_field(image: object, field: str) -> None:
    with pytest.raises(ApiError) as err:
        decode_image_values(image)
    assert err.value.status_code == 422
    assert err.value.field == field, err.value.message


def test_json_envelope_errors() -> None:
    with pytest.raises(ApiError) as err:
        decode_json(b"{not json", None)
    assert (err.value.status_code, err.value.field) == (400, "body")
    with pytest.raises(ApiError) as err:
        decode_json(json.dumps({"model": "int8", "image": [0] * 784, "x": 1}).encode(), None)
    assert err.value.field == "x"
    with pytest.raises(ApiError) as err:
        decode_json(json.dumps({"model": "int8", "image": [0] * 784}).encode(), "fp32")
    assert err.value.field == "model"
    with pytest.raises(ApiError) as err:
        decode_json(json.dumps([1, 2]).encode(), None)
    assert err.value.field == "body"


def test_binary() -> None:
    inp = decode_binary(bytes(range(256)) * 3 + bytes(16), "int8", "r1")
    assert inp.image.dtype == np.uint8 and inp.image.shape == (28, 28) and inp.model == "int8"
    with pytest.raises(ApiError) as err:
        decode_binary(b"\0" * 783, "int8", None)
    assert (err.value.status_code, err.value.field) == (422, "body")
    with pytest.raises(ApiError) as err:
        decode_binary(b"\0" * 784, None, None)
    assert err.value.field == "model"
