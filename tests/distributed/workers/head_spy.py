"""Records which log-prob path a worker's trainer code really took (fused or output-layer logits),
so a "fused equals unfused" test cannot pass by running the same path twice. Observes only:
every call still goes to ``TokenHead.log_probs``."""

from megatron_tulu.losses.vocab_parallel import TokenHead

SEEN: set[bool] = set()
_log_probs = TokenHead.log_probs


def _observed(self, *args, **kwargs):
    SEEN.add(self.fused)
    return _log_probs(self, *args, **kwargs)


TokenHead.log_probs = _observed  # type: ignore[method-assign]


def paths() -> list[str]:
    return sorted("fused" if f else "logits" for f in SEEN)
