"""`models.layers`' fast forms of flax layers, each against the flax layer it stands in for.

- `UpConv2x2`: the decoders' 2x2 stride-2 transposed conv as a matmul, against `nn.ConvTranspose`: same
  parameters, initial values, outputs and gradients. Both forms are checked on CPU: "matmul" (what
  `impl="auto"` runs on CPU) and "conv" (`lax.conv_transpose`, what `impl="auto"` runs elsewhere).
- `conv_general_dilated`: `nn.Conv` with the kernel gradient as matmuls: the same module and parameters,
  bit-identical outputs and input gradients, kernel gradients within float32 round-off.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from landslide_jax.models import layers
from landslide_jax.models.layers import UpConv2x2, up_conv_2x2_matmul

IMPLS = ["matmul", "conv"]


def _reference(features: int, **kwargs) -> nn.Module:
  """The layer the models used before: flax's transposed conv with its defaults (padding 'SAME')."""
  return nn.ConvTranspose(features, (2, 2), strides=(2, 2), **kwargs)


def _random(shape, seed: int, scale: float = 1.0) -> jnp.ndarray:
  return jnp.asarray(np.random.default_rng(seed).normal(0.0, scale, shape), jnp.float32)


def _params(channels: int, features: int, seed: int) -> dict:
  """Random kernel and (nonzero, so that it counts) bias of a 2x2 transposed conv."""
  return {"params": {"kernel": _random((2, 2, channels, features), seed, 1 / np.sqrt(4 * channels)),
                     "bias": _random((features,), seed + 1)}}


def _close(actual, desired, rtol: float = 2e-6) -> None:
  """Equal within float32 round-off: the two forms sum over input channels in different orders."""
  actual, desired = np.asarray(actual), np.asarray(desired)
  assert actual.shape == desired.shape and actual.dtype == desired.dtype
  np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * float(np.max(np.abs(desired))))


# (batch, height, width, channels, features): odd and even sizes, batch 1 and 3, channels 1, 5 and 64.
CASES = [(1, 4, 4, 1, 1), (3, 5, 7, 5, 64), (1, 7, 3, 64, 5), (3, 8, 6, 64, 64), (1, 1, 1, 5, 1),
         (3, 6, 9, 1, 5)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch,height,width,channels,features", CASES)
def test_output_equals_flax_conv_transpose(impl, batch, height, width, channels, features):
  x = _random((batch, height, width, channels), seed=height * 10 + width)
  variables = _params(channels, features, seed=channels + features)
  want = _reference(features).apply(variables, x)
  got = UpConv2x2(features, impl=impl).apply(variables, x)
  assert want.shape == (batch, 2 * height, 2 * width, features)  # 'SAME': exactly twice the size
  _close(got, want)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch,height,width,channels,features", CASES)
def test_gradients_equal_flax_conv_transpose(impl, batch, height, width, channels, features):
  x = _random((batch, height, width, channels), seed=height + width)
  variables = _params(channels, features, seed=2 * channels + features)
  # A random cotangent, so that every output pixel's gradient carries its own weight.
  cotangent = _random((batch, 2 * height, 2 * width, features), seed=99)

  def loss(module):
    return lambda v, x_: jnp.sum(module.apply(v, x_) * cotangent)

  want = jax.grad(loss(_reference(features)), argnums=(0, 1))(variables, x)
  got = jax.grad(loss(UpConv2x2(features, impl=impl)), argnums=(0, 1))(variables, x)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):  # d/d kernel, d/d bias, d/d input
    _close(g, w, rtol=1e-5)


def test_each_output_pixel_gets_the_mirrored_kernel_tap():
  """Output pixel (2i + a, 2j + b) is x[i, j] @ kernel[1 - a, 1 - b]: the orientation flax's
  ConvTranspose (`transpose_kernel=False`) has, spelled out on a single input pixel."""
  x = jnp.zeros((1, 3, 3, 1)).at[0, 1, 1, 0].set(1.0)
  kernel = jnp.array([[1.0, 2.0], [3.0, 4.0]]).reshape(2, 2, 1, 1)
  variables = {"params": {"kernel": kernel, "bias": jnp.zeros(1)}}
  want = np.zeros((6, 6))
  want[2:4, 2:4] = [[4.0, 3.0], [2.0, 1.0]]
  np.testing.assert_array_equal(_reference(1).apply(variables, x)[0, ..., 0], want)
  for impl in IMPLS:
    np.testing.assert_array_equal(UpConv2x2(1, impl=impl).apply(variables, x)[0, ..., 0], want)
  np.testing.assert_array_equal(up_conv_2x2_matmul(x, kernel)[0, ..., 0], want)


@pytest.mark.parametrize("impl", IMPLS)
def test_init_creates_flax_conv_transpose_parameters(impl):
  """Same names, shapes, dtypes and initial values from the same key as nn.ConvTranspose: a model
  initialised with the new layer is the one the old layer gave."""
  x = jnp.ones((2, 4, 4, 5))
  want = _reference(64).init(jax.random.key(3), x)
  got = UpConv2x2(64, impl=impl).init(jax.random.key(3), x)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  assert jax.tree.map(lambda a: (a.shape, a.dtype), got) == jax.tree.map(lambda a: (a.shape, a.dtype), want)
  assert got["params"]["kernel"].shape == (2, 2, 5, 64) and got["params"]["bias"].shape == (64,)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(g, w)
  assert float(jnp.std(got["params"]["kernel"])) > 0  # a random kernel, not a constant


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(6, 5, 3), (2, 3, 4, 5, 3)])
def test_unbatched_and_multi_batch_inputs_as_flax(impl, shape):
  """Inputs without a batch axis, or with several, are treated as nn.ConvTranspose treats them."""
  x = _random(shape, seed=5)
  variables = _params(3, 4, seed=6)
  want = _reference(4).apply(variables, x)
  got = UpConv2x2(4, impl=impl).apply(variables, x)
  assert want.shape == (*shape[:-3], 2 * shape[-3], 2 * shape[-2], 4)
  _close(got, want)


@pytest.mark.parametrize("impl", IMPLS)
def test_bfloat16_compute_dtype_as_flax(impl):
  x = _random((2, 4, 6, 5), seed=7)
  variables = _params(5, 8, seed=8)
  want = _reference(8, dtype=jnp.bfloat16).apply(variables, x)
  got = UpConv2x2(8, dtype=jnp.bfloat16, impl=impl).apply(variables, x)
  assert got.dtype == want.dtype == jnp.bfloat16
  # bfloat16 keeps 8 bits of mantissa: about 3 significant digits.
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), rtol=2e-2,
                             atol=2e-2)


def _has_convolution(module: nn.Module) -> bool:
  x = jnp.ones((1, 4, 4, 3))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  return "conv_general_dilated" in str(jax.make_jaxpr(module.apply)(variables, x))


def test_auto_picks_the_form_at_trace_time_by_backend(monkeypatch):
  assert jax.default_backend() == "cpu"
  assert not _has_convolution(UpConv2x2(2))  # CPU: the matmul form, no convolution in the program
  assert not _has_convolution(UpConv2x2(2, impl="matmul"))
  assert _has_convolution(UpConv2x2(2, impl="conv"))
  assert _has_convolution(_reference(2))
  # On another backend (traced here on CPU, as if it were one) 'auto' keeps lax.conv_transpose.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert _has_convolution(UpConv2x2(2))
  monkeypatch.setattr(layers, "UPCONV_IMPL_BY_BACKEND", {"gpu": "matmul"})
  assert not _has_convolution(UpConv2x2(2))


def test_unknown_impl_is_rejected_naming_the_valid_ones():
  with pytest.raises(ValueError, match="'fast'") as info:
    UpConv2x2(2, impl="fast").init(jax.random.key(0), jnp.ones((1, 2, 2, 1)))
  for name in ("auto", "matmul", "conv"):
    assert repr(name) in str(info.value)


# ----------------------------------------------------------------------------------------------------------
# conv_general_dilated: nn.Conv with the kernel gradient as one matmul per kernel tap.


@pytest.fixture(name="matmul_everywhere")
def fixture_matmul_everywhere(monkeypatch):
  """Every layer takes the matmul kernel gradient on CPU (threshold 1 input channel)."""
  monkeypatch.setattr(layers, "KERNEL_GRAD_MATMUL_MIN_CHANNELS", {"cpu": 1})


# (batch, height, width, channels, features, kernel, stride): odd sizes (asymmetric 'SAME' padding at
# stride 2), 1x1 and 3x3 kernels, one channel, a 1 x 1 image.
CONV_CASES = [(2, 8, 8, 5, 7, 3, 1), (1, 9, 6, 3, 4, 3, 2), (3, 7, 7, 16, 1, 3, 2), (2, 5, 4, 1, 3, 3, 1),
              (1, 6, 6, 4, 4, 1, 1), (2, 6, 7, 4, 5, 1, 2), (1, 1, 1, 3, 2, 3, 1), (2, 4, 4, 8, 8, 3, 2)]


@pytest.mark.parametrize("batch,height,width,channels,features,kernel,stride", CONV_CASES)
def test_conv_matmul_kernel_gradient_equals_flax_conv(matmul_everywhere, batch, height, width, channels,
                                                      features, kernel, stride):
  del matmul_everywhere
  kwargs = dict(features=features, kernel_size=(kernel, kernel), strides=(stride, stride), padding="SAME")
  plain, fast = nn.Conv(**kwargs), nn.Conv(**kwargs, conv_general_dilated=layers.conv_general_dilated)
  x = _random((batch, height, width, channels), seed=height * 7 + width)
  variables = plain.init(jax.random.key(1), x)
  variables = {"params": {**variables["params"], "bias": _random((features,), seed=3)}}
  out = plain.apply(variables, x)
  cotangent = _random(out.shape, seed=4)

  def loss(module):
    return lambda v, x_: jnp.sum(module.apply(v, x_) * cotangent)

  # The forward pass and the input gradient are XLA's own convolutions in both: bit for bit.
  np.testing.assert_array_equal(fast.apply(variables, x), out)
  want = jax.grad(loss(plain), argnums=(0, 1))(variables, x)
  got = jax.grad(loss(fast), argnums=(0, 1))(variables, x)
  assert "custom_vjp_call" in str(jax.make_jaxpr(fast.apply)(variables, x))  # the new form ran
  np.testing.assert_array_equal(got[1], want[1])
  np.testing.assert_array_equal(got[0]["params"]["bias"], want[0]["params"]["bias"])
  # The kernel gradient sums over batch and pixels in another order: float32 round-off.
  _close(got[0]["params"]["kernel"], want[0]["params"]["kernel"], rtol=1e-5)


def test_conv_kernel_gradient_is_the_sum_over_pixels_of_input_times_output_gradient():
  """A known answer, independent of XLA: the gradient of sum(conv(x, k) * g) w.r.t. k[i, j, c, f] is
  the sum over output pixels (p, q) of xpad[s*p + i, s*q + j, c] * g[p, q, f] (numpy loops)."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 6, 3)).astype(np.float32)
  g = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)  # stride 2, 'SAME': ceil(5/2) x ceil(6/2)
  pads = ((1, 1), (0, 1))  # total padding 2 rows and 1 column, the larger half after, as XLA pads
  got = layers.kernel_grad_matmul(jnp.asarray(x), jnp.asarray(g), (3, 3, 3, 4), (2, 2), pads)
  xpad = np.pad(x, ((0, 0), *pads, (0, 0)))
  want = np.zeros((3, 3, 3, 4), np.float64)
  for i in range(3):
    for j in range(3):
      for p in range(3):
        for q in range(3):
          want[i, j] += np.einsum("nc,nf->cf", xpad[:, 2 * p + i, 2 * q + j], g[:, p, q])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  from jax import lax  # pylint: disable=import-outside-toplevel
  assert tuple(map(tuple, lax.padtype_to_pads((5, 6), (3, 3), (2, 2), "SAME"))) == pads


def _uses_matmul_kernel_grad(channels: int) -> bool:
  conv = nn.Conv(4, (3, 3), padding="SAME", conv_general_dilated=layers.conv_general_dilated)
  x = jnp.ones((1, 4, 4, channels))
  variables = conv.init(jax.random.key(0), x)
  return "custom_vjp_call" in str(jax.make_jaxpr(conv.apply)(variables, x))


def test_kernel_gradient_form_is_chosen_by_channels_and_backend_at_trace_time(monkeypatch):
  assert layers.KERNEL_GRAD_MATMUL_MIN_CHANNELS["cpu"] == 64
  assert not _uses_matmul_kernel_grad(63) and _uses_matmul_kernel_grad(64)
  # Another backend (traced here on CPU, as if it were one): XLA's gradient, for want of measurements.
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert not _uses_matmul_kernel_grad(64)
