import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import linen as nn

from lip_jax.weights import torch_io
from lip_jax.weights.mps2s import KEY_RULES
from lip_jax.models.clip import ClipText
from lip_jax.models.tokenizer import get_tokenizer
from test_mps2s_parity import TextEncoder


def test_clip_text_pooled_and_states_match_torch():
    vocab, ctx, width, layers, heads, proj = 259, 16, 32, 2, 4, 24
    torch.manual_seed(0)
    ref = TextEncoder(vocab, ctx, width, layers, heads, dim=8).eval()
    text_projection = torch.randn(width, proj) / width ** 0.5
    state = {k: v.numpy() for k, v in ref.state_dict().items() if not k.startswith("cond_emb.")}
    state["text_projection"] = text_projection.numpy()
    model = ClipText(vocab, ctx, width, layers, heads, proj_dim=proj)
    ids = jnp.asarray(get_tokenizer("bytes", ctx)(["a red car", "two cats on a mat"]))
    template = nn.meta.unbox(jax.eval_shape(lambda r: model.init(r, ids), jax.random.PRNGKey(0))["params"])
    params = torch_io.torch_to_flax(state, template, "CLIP text", (), KEY_RULES)
    params = jax.tree_util.tree_map(jnp.asarray, params)

    t_ids = torch.tensor(np.asarray(ids), dtype=torch.long)
    with torch.no_grad():
        causal = torch.full((ctx, ctx), float("-inf")).triu(1)
        states = ref.ln_final(ref.transformer(ref.token_embedding(t_ids) + ref.positional_embedding, causal))
        pooled = states[torch.arange(2), t_ids.argmax(-1)] @ text_projection
    ours_states = model.apply({"params": params}, ids, method=ClipText.states)
    ours_pooled = model.apply({"params": params}, ids, method=ClipText.pooled)
    np.testing.assert_allclose(np.asarray(ours_states), states.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ours_pooled), pooled.numpy(), rtol=1e-4, atol=1e-5)
    # all 77 (here 16) states are used, padding included: states differ across positions
    assert np.abs(np.asarray(ours_states)[:, -1] - np.asarray(ours_states)[:, -2]).max() > 1e-3
