"""Authentication and roles: who may call which route (off unless MONAI_LABEL_AUTH_ENABLE=true)."""
