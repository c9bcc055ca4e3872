import os

# Parity tests compare float32 results: keep XLA on full-precision matmuls and one host device
# unless a test asks for more.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The CLI keeps compiled programs in ~/.cache/lip-jax; tests calling it (in process or as
# subprocesses) must neither write the user's cache nor run faster on a warm one than in CI.
os.environ["LIP_JAX_CACHE_DIR"] = ""

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

import pytest  # noqa: E402

STAGE2 = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "test_stage2.py")


@pytest.fixture(scope="module")
def vq_ckpt(tmp_path_factory):
    """A random `reduced` DF-VQGAN saved as orbax: the frozen model of the tiny stage-2 runs."""
    import flax.linen as nn

    from lip_jax.config import load_config
    from lip_jax.models import dfvqgan
    from lip_jax.weights.store import save_params

    path = str(tmp_path_factory.mktemp("vq") / "dfvqgan")
    cfg = load_config(STAGE2).vqgan
    save_params(path, nn.unbox(dfvqgan.init_params(dfvqgan.from_config(cfg), jax.random.key(7))))
    return path


@pytest.fixture
def gcs():
    """A local GCS emulator for this test (tests/object_store.py): `gcs.root` is a `gs://` URL that
    orbax and etils.epath write to, `gcs.env` the variables a child process needs to reach it."""
    from object_store import gcs_emulator

    with gcs_emulator() as emulator:
        yield emulator
