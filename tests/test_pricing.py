from __future__ import annotations

import pytest

from omniflash.contract import parse_generation_request
from omniflash.pricing import Pricing, credits


@pytest.mark.parametrize(
    ("resolution", "seconds", "expected_credits", "expected_cost"),
    [("1080p", 10, 4.0, 0.4), ("720p", 6, 1.5, 0.15), ("4k", 4, 4.0, 0.4), ("720p", 4, 1.0, 0.1)],
)
def test_prices(
    resolution: str, seconds: int, expected_credits: float, expected_cost: float
) -> None:
    p = Pricing()
    milli = p.millicredits(resolution, seconds)
    assert credits(milli) == expected_credits
    assert p.cost(milli) == pytest.approx(expected_cost)


def test_reference_video_is_held_at_the_longest_output() -> None:
    spec = parse_generation_request(
        {"model": "Omni-Flash-Ext", "prompt": "x", "video_urls": ["https://e.com/v.mp4"]}
    )
    assert Pricing().hold(spec) == Pricing().millicredits("720p", 10)


def test_configurable() -> None:
    p = Pricing(per_second={"720p": 1.0, "1080p": 2.0, "4k": 3.0}, credit_price=0.5)
    assert credits(p.millicredits("4k", 8)) == 24.0
    assert p.cost(p.millicredits("4k", 8)) == 12.0


def test_prices_come_from_the_environment() -> None:
    from omniflash.settings import Settings

    env = {"OMNIFLASH_PRICE_1080P": "0.5", "OMNIFLASH_CREDIT_PRICE": "0.2"}
    pricing = Settings.from_env(env).pricing
    assert credits(pricing.millicredits("1080p", 10)) == 5.0
    assert credits(pricing.millicredits("720p", 4)) == 1.0
    assert pricing.cost(5000) == pytest.approx(1.0)
    assert Settings.from_env({}).pricing == Pricing()
