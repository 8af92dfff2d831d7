import pytest

from inference_pod.worker.config import Limits
from inference_pod.worker.request import parse_request
from loraplex.api.errors import ApiError

LIM = Limits(max_steps=30, max_width=512, max_height=256, max_prompt_chars=50, max_images=2, max_adapters_per_request=2)


def parse(body, openai=False):
    return parse_request(body, LIM, openai=openai, default_steps=25, default_size=64)


def test_defaults_and_openai_size():
    r = parse({"model": "a", "prompt": "p"})
    assert (r.steps, r.width, r.height, r.seed, r.n) == (25, 64, 64, None, 1)
    r = parse({"model": "a", "prompt": "p", "size": "128x96", "n": 2}, openai=True)
    assert (r.width, r.height, r.n) == (128, 96, 2)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"prompt": "p"}, "model"),
        ({"model": 3, "prompt": "p"}, "model"),
        ({"model": "a"}, "prompt"),
        ({"model": "a", "prompt": "x" * 51}, "prompt"),
        ({"model": "a", "prompt": "p", "steps": 31}, "steps"),
        ({"model": "a", "prompt": "p", "steps": 0}, "steps"),
        ({"model": "a", "prompt": "p", "steps": "5"}, "steps"),
        ({"model": "a", "prompt": "p", "width": 100}, "width"),
        ({"model": "a", "prompt": "p", "height": 264}, "height"),
        ({"model": "a", "prompt": "p", "size": "big"}, "size"),
        ({"model": "a", "prompt": "p", "size": "1024x1024"}, "size"),
        ({"model": "a", "prompt": "p", "seed": -1}, "seed"),
        ({"model": "a", "prompt": "p", "n": 3}, "n"),
        ({"model": "a", "prompt": "p", "guidance_scale": 99}, "guidance_scale"),
        ({"model": "a", "prompt": "p", "bogus": 1}, "bogus"),
        ({"model": "a", "prompt": "p", "adapters": "x"}, "adapters"),
        ({"model": "a", "prompt": "p", "adapters": [{"name": "x", "scale": "hi"}]}, "adapters[0].scale"),
        ({"model": "a", "prompt": "p", "adapters": [{"nom": "x"}]}, "adapters[0].name"),
        ({"model": "a", "prompt": "p", "adapters": ["a", "b", "c"]}, "adapters"),
    ],
)
def test_bad_fields_are_named(body, param):
    with pytest.raises(ApiError) as e:
        parse(body)
    assert e.value.status == 400
    assert e.value.param == param
    assert param.split("[")[0] in e.value.message


def test_openai_only_b64_json():
    with pytest.raises(ApiError) as e:
        parse({"model": "a", "prompt": "p", "response_format": "url"}, openai=True)
    assert e.value.param == "response_format"


def test_adapters_with_scales():
    r = parse({"model": "base", "prompt": "p", "adapters": [{"name": "style", "scale": 0.5}, "char"]})
    assert [(a.name, a.scale) for a in r.adapters] == [("style", 0.5), ("char", None)]


def test_not_an_object():
    with pytest.raises(ApiError):
        parse(["model"])
