"""Test-wide set-up: 8 simulated CPU devices, so sharding tests run on one machine.

XLA reads the flag when the backend starts, so it is set before anything imports jax.
"""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
