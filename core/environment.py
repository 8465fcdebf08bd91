"""Process environment every entry point sets before Ray, MLflow or transformers are imported:
offline (nothing downloads), no usage stats or telemetry, every Ray process on 127.0.0.1, no
Ray auth token file (a stale one makes a second node fail), quiet tokenizers."""

DEFAULTS = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TOKENIZERS_PARALLELISM": "false",
}
