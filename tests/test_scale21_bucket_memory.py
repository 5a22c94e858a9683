"""The memory store of rate-limit buckets, full: which bucket it forgets.

Found by the scale audit: past `max_buckets` the store dropped the bucket made first, not the one used least
recently (a refused call did not count as a use either). A tool's bucket shared by every caller is made early,
so once that many callers had come and gone it was forgotten between two of its calls and came back full: its
bound no longer held. The store is pure and synchronous (its clock injected), so it is tested as it is.
"""

from __future__ import annotations

import anyio

from vmcp_opt.config import RateLimitsConfig
from vmcp_opt.routing.budget import LimitReached
from vmcp_opt.shared.rate_limits import MemoryBuckets, RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_full_store_forgets_the_least_recently_used_bucket_not_a_tool_s_shared_one() -> None:
    config = RateLimitsConfig.model_validate(
        {"per_caller": {"rate": 100, "burst": 100}, "per_tool": {"costly": {"rate": 0.001, "burst": 5}}}
    )
    limiter = RateLimiter(config, MemoryBuckets(Clock(), max_buckets=4))

    async def calls() -> int:
        admitted = 0
        for caller in range(20):  # a new caller each time calls another tool, then the costly one
            await limiter.admit(f"address:10.0.0.{caller}", "cheap")
            try:
                await limiter.admit("address:10.0.1.1", "costly")
                admitted += 1
            except LimitReached:
                pass
        return admitted

    assert anyio.run(calls) == 5  # the costly tool's burst, however many callers came and went
