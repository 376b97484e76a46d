"""Batcher: batches form under concurrency, lone requests do not wait, overload and failures propagate;
batches are cut into model calls by padded tokens."""

import asyncio
import time

import numpy as np
import pytest

from bertrec.errors import DeadlineExceeded, Overloaded
from bertrec.workers.batching import Batcher, plan_model_calls


class RecordingEncoder:
    def __init__(self, delay_s=0.0, fail=False):
        self.calls: list[list[str]] = []
        self.delay_s = delay_s
        self.fail = fail

    def __call__(self, texts):
        self.calls.append(list(texts))
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("model exploded")
        return np.array([[float(len(t)), float(hash(t) % 97)] for t in texts], dtype=np.float32)


def run(coro):
    return asyncio.run(coro)


def test_results_match_each_caller_in_order():
    enc = RecordingEncoder()

    async def main():
        b = Batcher(enc, max_batch_size=8, max_wait_s=0.01)
        texts = [[f"t{i}-{j}" * (j + 1) for j in range(3)] for i in range(10)]
        results = await asyncio.gather(*(b.submit(t) for t in texts))
        for t, r in zip(texts, results):
            np.testing.assert_array_equal(r, enc(t))

    run(main())


def test_concurrent_callers_share_batches():
    enc = RecordingEncoder(delay_s=0.02)

    async def main():
        b = Batcher(enc, max_batch_size=16, max_wait_s=0.01)
        await asyncio.gather(*(b.submit([f"text {i}"]) for i in range(32)))
        return b

    b = run(main())
    assert len(enc.calls) < 32 / 4  # far fewer model calls than callers
    assert max(len(c) for c in enc.calls) <= 16
    assert b.stats.texts == 32 and b.stats.mean_batch_size > 4


def test_lone_request_does_not_wait():
    enc = RecordingEncoder()

    async def main():
        b = Batcher(enc, max_batch_size=64, max_wait_s=0.5)
        started = time.monotonic()
        await b.submit(["only one"])
        return time.monotonic() - started

    assert run(main()) < 0.25  # well under max_wait_s


def test_full_queue_raises_overloaded():
    enc = RecordingEncoder(delay_s=0.05)

    async def main():
        b = Batcher(enc, max_batch_size=2, max_wait_s=0.0, max_queue=4)
        first = asyncio.ensure_future(b.submit(["a", "b", "c", "d"]))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await b.submit(["e", "f", "g", "h", "i"])
        await first

    run(main())


def test_failure_fails_every_waiter_of_the_batch():
    enc = RecordingEncoder(fail=True)

    async def main():
        b = Batcher(enc, max_batch_size=8, max_wait_s=0.01)
        results = await asyncio.gather(*(b.submit([f"x{i}"]) for i in range(4)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        enc.fail = False
        assert (await b.submit(["after"])).shape == (1, 2)  # the batcher survives

    run(main())


def test_expired_request_is_skipped_not_encoded():
    enc = RecordingEncoder()

    async def main():
        b = Batcher(enc, max_batch_size=8, max_wait_s=0.0)
        with pytest.raises(DeadlineExceeded):
            await b.submit(["late"], deadline=time.time() - 1)
        return b

    b = run(main())
    assert enc.calls == [] and b.stats.expired == 1


def test_configure_at_run_time():
    b = Batcher(RecordingEncoder(), max_batch_size=8, max_wait_s=0.01)
    b.configure(max_batch_size=32, max_wait_s=0.002)
    assert (b.max_batch_size, b.max_wait_s) == (32, 0.002)


# Token-aware batching: a batch is cut into model calls by padded tokens.


def padded_tokens(calls: list[list[int]], lengths: list[int]) -> list[int]:
    return [len(c) * max(lengths[i] for i in c) for c in calls]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("overhead", [0, 32, 10**6])
def test_plan_covers_every_text_once_within_the_token_cap(seed, overhead):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 129, size=int(rng.integers(1, 300))).tolist()
    cap = int(rng.choice([128, 300, 1024, 8192]))
    calls = plan_model_calls(lengths, cap, overhead)
    assert sorted(i for c in calls for i in c) == list(range(len(lengths)))
    assert max(padded_tokens(calls, lengths)) <= cap
    # Grouped by length: the calls come in ascending length and never interleave.
    flat = [lengths[i] for c in calls for i in c]
    assert flat == sorted(flat)


def test_plan_splits_mixed_lengths_and_merges_similar_ones():
    titles, long_ones = [10] * 60, [120] * 4
    # One call would pad 64 texts to 120 tokens (7,680); apart they cost 600 + 480.
    assert sorted(map(len, plan_model_calls(titles + long_ones, 8192, 32))) == [4, 60]
    # Texts one token apart are not worth a call each on a CPU (overhead 32 tokens a call) ...
    assert len(plan_model_calls([10, 11, 12, 13] * 4, 8192, 32)) == 1
    # ... and only the cap cuts a batch when a call costs thousands of tokens (a GPU).
    assert len(plan_model_calls(titles + long_ones, 8192, 10**6)) == 1
    assert [len(c) for c in plan_model_calls([128] * 100, 8192, 10**6)] == [50, 50]  # even, not 64 + 36


def test_plan_edge_cases():
    assert plan_model_calls([], 8192) == []
    assert plan_model_calls([500], 128) == [[0]]  # longer than the cap: alone, never dropped
    assert plan_model_calls([5, 3, 5], 8192, 0) == [[1], [0, 2]]  # no overhead: one call per length


class TokenCountingEncoder:
    """A fake encode function that plans its model calls like BertEncoder, with words as tokens."""

    def __init__(self, max_batch_tokens: int):
        self.max_batch_tokens = max_batch_tokens
        self.model_calls: list[tuple[int, int]] = []  # (rows, longest) per call

    def __call__(self, texts):
        lengths = [len(t.split()) + 2 for t in texts]  # + [CLS] and [SEP]
        out = np.empty((len(texts), 2), dtype=np.float32)
        for rows in plan_model_calls(lengths, self.max_batch_tokens, 4):
            self.model_calls.append((len(rows), max(lengths[i] for i in rows)))
            out[rows] = [[lengths[i], hash(texts[i]) % 97] for i in rows]
        return out


def test_batcher_flushes_are_cut_into_calls_within_the_token_cap():
    enc = TokenCountingEncoder(max_batch_tokens=64)

    async def main():
        b = Batcher(enc, max_batch_size=32, max_wait_s=0.01)
        texts = [" ".join(["w"] * (1 + i % 13)) for i in range(40)]
        results = await asyncio.gather(*(b.submit([t]) for t in texts))
        for t, r in zip(texts, results):
            assert r[0, 0] == len(t.split()) + 2  # each caller gets its own row back
        return b

    b = run(main())
    assert b.stats.batches < 40  # callers shared batches ...
    assert len(enc.model_calls) > b.stats.batches  # ... which were cut into several model calls
    assert all(rows * longest <= 64 for rows, longest in enc.model_calls)


def test_batcher_stats_histograms():
    enc = RecordingEncoder()

    async def main():
        b = Batcher(enc, max_batch_size=4, max_wait_s=0.0)
        await b.submit(["a", "b", "c"])
        await b.submit(["d"])
        return b

    stats = run(main()).stats
    assert stats.batch_sizes.count == 2 and stats.batch_sizes.sum == 4
    assert stats.batch_sizes.buckets[:3] == [1, 1, 2]  # <= 1, <= 2, <= 4
    assert stats.queue_times.count == 4 and stats.mean_queue_s >= 0


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_real_encoder_keeps_the_token_cap_and_matches_unbatched_vectors(runtime):
    from bertrec.movielens import bundled_path, read_movies
    from bertrec.workers.encoder import BertEncoder

    titles = [m.text for m in list(read_movies(bundled_path()))[:20]]
    long_texts = [f"{t}. " + " ".join(titles[i:] + titles[:i]) for i, t in enumerate(titles[:6])]  # up to 128
    texts = [*long_texts[:3], *titles, *long_texts[3:]]
    cap = 512
    encoder = BertEncoder("", "cpu", max_batch_tokens=cap, runtime=runtime)
    assert encoder.runtime == runtime
    shapes: list[tuple[int, int]] = []
    model_call = encoder._pooled

    def recording(batch):
        shapes.append(batch["input_ids"].shape)
        return model_call(batch)

    encoder._pooled = recording
    batched = encoder.encode_items(texts)
    lengths = [len(ids) for ids in encoder.tokenizer(texts, truncation=True, max_length=128)["input_ids"]]
    assert max(lengths) == 128 and min(lengths) < 16  # really mixed lengths
    assert len(shapes) >= 3 and all(rows * width <= cap for rows, width in shapes)
    assert sum(rows for rows, _ in shapes) == len(texts)
    assert encoder.stats.largest_call_tokens <= cap and encoder.stats.padded_tokens >= encoder.stats.tokens
    alone = np.concatenate([encoder.encode_items([t]) for t in texts])
    np.testing.assert_allclose(batched, alone, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
