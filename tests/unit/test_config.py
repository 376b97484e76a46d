"""Config precedence: defaults < TOML < BERTREC_* environment < flags; bad values are refused."""

import pytest

from bertrec.config import Config, load_config


def test_defaults():
    config = load_config(environ={})
    assert config == Config()
    assert config.index.factory == "Flat" and config.server.port == 50051


def test_precedence(tmp_path):
    toml = tmp_path / "bertrec.toml"
    toml.write_text('[server]\nport = 6000\nmax_k = 50\n[index]\nfactory = "HNSW32"\n')
    env = {"BERTREC_SERVER_PORT": "7000", "BERTREC_WORKERS_MAX_WAIT_S": "0.01"}
    config = load_config(toml, environ=env, overrides={"server": {"port": 8000, "host": None}})
    assert config.server.port == 8000  # flag beats env beats toml
    assert config.server.max_k == 50  # from toml
    assert config.index.factory == "HNSW32"
    assert config.workers.max_wait_s == 0.01  # env, coerced to float
    assert config.server.host == "127.0.0.1"  # a flag left unset changes nothing


def test_config_file_from_environment(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[store]\nload_demo = false\n")
    assert load_config(environ={"BERTREC_CONFIG": str(toml)}).store.load_demo is False


@pytest.mark.parametrize(
    "env",
    [
        {"BERTREC_SERVER_PORT": "not-a-number"},
        {"BERTREC_SERVER_PORT": "70000"},
        {"BERTREC_STORE_LOAD_DEMO": "maybe"},
        {"BERTREC_WORKERS_MAX_BATCH_SIZE": "0"},
        {"BERTREC_WORKERS_MAX_BATCH_SIZE": "5000"},  # above the queue (4096)
        {"BERTREC_WORKERS_MAX_WAIT_S": "-0.001"},
        {"BERTREC_WORKERS_MAX_WAIT_S": "nan"},
        {"BERTREC_WORKERS_MAX_BATCH_TOKENS": "100"},  # below model.max_length (128): a text must fit
        {"BERTREC_WORKERS_MAX_BATCH_TOKENS": "100000000"},
        {"BERTREC_INDEX_SHARDS": "0"},
        {"BERTREC_INDEX_NPROBE": "-1"},
        {"BERTREC_INDEX_EF_SEARCH": "-64"},
        {"BERTREC_INDEX_NPROBE": "auto"},  # auto is 0
        {"BERTREC_RERANK_EASE_MAX_ITEMS": "0"},
        {"BERTREC_RERANK_NEIGHBOUR_CANDIDATES": "-1"},
        {"BERTREC_MODEL_RUNTIME": "tensorrt"},
        {"BERTREC_SERVER_WORKER_NICE": "15"},  # would sink searches to the encoders' level
        {"BERTREC_SERVER_WORKER_NICE": "-1"},
    ],
)
def test_bad_values_are_refused(env):
    with pytest.raises(ValueError):
        load_config(environ=env)


def test_index_search_breadth_is_auto_unless_set():
    assert load_config(environ={}).index.nprobe == load_config(environ={}).index.ef_search == 0  # 0 = auto
    config = load_config(environ={"BERTREC_INDEX_NPROBE": "512", "BERTREC_INDEX_EF_SEARCH": "1024"})
    assert (config.index.nprobe, config.index.ef_search) == (512, 1024)


def test_unknown_setting_in_file(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[server]\nprot = 1\n")
    with pytest.raises(ValueError, match="server.prot"):
        load_config(toml, environ={})


def test_token_is_masked_in_logged_config():
    config = load_config(environ={"BERTREC_AUTH_TOKEN": "s3cret"})
    assert config.auth.token == "s3cret"
    assert "s3cret" not in str(config.to_dict())
