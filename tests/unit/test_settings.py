from __future__ import annotations

import pytest
from pydantic import ValidationError

from berth_common.settings import ApiSettings, CommonSettings, WorkerSettings, load_or_exit

GOOD = {"postgres_password": "s3cret-enough", "redis_password": "an0ther-secret"}


def test_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTGRES_PASSWORD", "from-the-env-1")
    monkeypatch.setenv("REDIS_PASSWORD", "from-the-env-2")
    monkeypatch.setenv("MAX_BATCH_ROWS", "7")
    monkeypatch.setenv("REDIS_KEY_PREFIX", "other")
    settings = ApiSettings()  # type: ignore[call-arg]
    assert settings.max_batch_rows == 7
    assert settings.ledger_stream == "other:ledger"
    assert settings.postgres_password.get_secret_value() == "from-the-env-1"


@pytest.mark.parametrize("secret", ["changeme", "change-me", "CHANGE-ME-please", "password", ""])
def test_placeholder_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValidationError, match="POSTGRES_PASSWORD"):
        CommonSettings(postgres_password=secret, redis_password="an0ther-secret")  # type: ignore[arg-type]


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 8"):
        CommonSettings(postgres_password="s3cret-enough", redis_password="short")  # type: ignore[arg-type]


def test_database_url_carries_every_part() -> None:
    settings = CommonSettings(**GOOD, postgres_host="db", postgres_db="ledger")  # type: ignore[arg-type]
    url = settings.database_url
    assert (url.host, url.database, url.password) == ("db", "ledger", "s3cret-enough")
    assert "s3cret-enough" not in repr(settings)


def test_worker_heartbeat_key_is_namespaced() -> None:
    settings = WorkerSettings(**GOOD, worker_consumer_name="w1")  # type: ignore[arg-type]
    assert settings.heartbeat_key() == "berth:worker:w1:heartbeat"


def test_load_or_exit_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    monkeypatch.setenv("REDIS_PASSWORD", "changeme")
    with pytest.raises(SystemExit) as exit_info:
        load_or_exit(ApiSettings)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "POSTGRES_PASSWORD: Field required" in err
    assert "REDIS_PASSWORD" in err
    assert "placeholder" in err


def test_version_pins() -> None:
    settings = ApiSettings(  # type: ignore[arg-type]
        **GOOD, model_versions="churn=2, fraud = 7", default_model_version="3"
    )
    assert settings.version_pins == {"churn": "2", "fraud": "7", "iris": "3"}
    with pytest.raises(ValidationError, match="MODEL_VERSIONS entries are name=version"):
        ApiSettings(**GOOD, model_versions="churn")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "mode"),
    [
        ("true", "all"),
        ("1", "all"),
        ("all", "all"),
        ("errors", "errors"),
        ("ERRORS", "errors"),
        ("false", "off"),
        ("0", "off"),
        ("off", "off"),
    ],
)
def test_access_log_modes(monkeypatch: pytest.MonkeyPatch, raw: str, mode: str) -> None:
    monkeypatch.setenv("ACCESS_LOG", raw)
    assert ApiSettings(**GOOD).access_log == mode  # type: ignore[arg-type]


def test_unknown_access_log_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCESS_LOG", "some")
    with pytest.raises(ValidationError, match="access_log"):
        ApiSettings(**GOOD)  # type: ignore[arg-type]


def test_model_trust_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    digest = "AB" * 32
    monkeypatch.setenv("TRUSTED_TYPES", "acme.features.Binner, _operator.neg")
    monkeypatch.setenv("PICKLE_SHA256", f"churn/3={digest}, iris/1 = {'c' * 64}")
    monkeypatch.setenv("ALLOW_PICKLE", "true")
    settings = ApiSettings(**GOOD)  # type: ignore[arg-type]
    assert settings.trusted_type_names == {"acme.features.Binner", "_operator.neg"}
    assert settings.pickle_pins == {"churn/3": digest.lower(), "iris/1": "c" * 64}
    assert settings.allow_pickle is True
    assert ApiSettings(**{**GOOD, "pickle_sha256": "", "trusted_types": ""}).pickle_pins == {}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("trusted_types", "Binner", "TRUSTED_TYPES entries are full names"),
        ("trusted_types", "acme.Binner,os.system()", "got 'os.system\\(\\)'"),
        ("pickle_sha256", "churn/3", "PICKLE_SHA256 entries are name/version=<sha256"),
        ("pickle_sha256", f"churn={'a' * 64}", "PICKLE_SHA256 entries"),
        ("pickle_sha256", f"churn/3={'a' * 63}", "PICKLE_SHA256 entries"),
        ("pickle_sha256", f"../x/3={'a' * 64}", "PICKLE_SHA256 entries"),
        ("pickle_sha256", f"churn/3={'a' * 64},churn/3={'b' * 64}", "pins churn/3 twice"),
    ],
)
def test_malformed_model_trust_settings(field: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ApiSettings(**GOOD, **{field: value})  # type: ignore[arg-type]
