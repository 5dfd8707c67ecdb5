"""U-Net and ResU-Net: exact parameter counts (with the arithmetic), architecture facts, shapes, BatchNorm.

Parameter counts come from `jax.eval_shape(model.init, ...)`: the model's own init, traced for exact
shapes and dtypes but not compiled. Compiling the real init (random initialisers of 8M parameters) took
6-40 s per model and channel count on a 2-core CPU, too slow for this file's budget; forward passes
therefore use small batches and variables filled with NumPy randoms of the init's shapes.
"""

from __future__ import annotations

import collections
import contextlib
import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax.training import early_stopping

from landslide_jax import train
from landslide_jax.models import MODELS, ResUNet, UNet, create_model, layers

# --------------------------------------------------------------------------------------------------------
# Helpers.


def _conv(k: int, cin: int, cout: int) -> int:
  """Parameters of a k x k conv (or transposed conv) with bias: k*k*cin*cout + cout."""
  return k * k * cin * cout + cout


def _abstract(model: nn.Module, channels: int, size: int = 32):
  """The variables' shapes and dtypes, as `model.init` would create them, without computing anything."""
  x = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), x)


def _count(tree) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _flat(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{('ResidualUnit_0', 'Conv_0', 'kernel'): shape, ...} of a variables tree."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


def _filled(abstract, seed: int = 0):
  """Concrete variables of `abstract`'s shapes: He-normal kernels, small random biases, fresh BN state."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    name = path[-1].key
    if name == "kernel":
      scale = np.sqrt(2.0 / np.prod(x.shape[:-1]))
      return jnp.asarray(rng.normal(0.0, scale, x.shape), x.dtype)
    if name in ("scale", "var"):
      return jnp.ones(x.shape, x.dtype)
    if name == "mean":
      return jnp.zeros(x.shape, x.dtype)
    if len(path) >= 2 and path[-2].key.startswith("BatchNorm"):  # BN bias: as flax initialises it
      return jnp.zeros(x.shape, x.dtype)
    return jnp.asarray(rng.normal(0.0, 0.1, x.shape), x.dtype)  # conv bias: nonzero, so it matters

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def _images(n: int, size: int, channels: int, seed: int = 0) -> jnp.ndarray:
  return jnp.asarray(np.random.default_rng(seed).normal(size=(n, size, size, channels)), jnp.float32)


@pytest.fixture(scope="module")
def initialised():
  """The shapes of `model.init`'s variables for 5 channels, of both models."""
  return {name: _abstract(create_model(name), 5) for name in ("unet", "resunet")}


# --------------------------------------------------------------------------------------------------------
# U-Net: 7,760,673 parameters for 5 channels.


def _unet_layers(c: int) -> list[tuple[str, int, int, int]]:
  """(kind, k, cin, cout) of every U-Net layer for `c` input channels, in network order."""
  layers = []
  cin = c
  for f in (32, 64, 128, 256, 512):  # four encoder blocks and the bottleneck: two 3x3 convs each
    layers += [("conv", 3, cin, f), ("conv", 3, f, f)]
    cin = f
  for f in (256, 128, 64, 32):  # decoder: 2x2 up-conv, concat with the skip (2f channels), two 3x3 convs
    layers += [("convT", 2, cin, f), ("conv", 3, 2 * f, f), ("conv", 3, f, f)]
    cin = f
  layers.append(("conv", 1, 32, 1))  # 1x1 head to one logit
  return layers


# The same arithmetic spelled out for 5 channels, k*k*cin*cout + cout per layer:
#   encoder 32:   3*3*5*32+32     =     1,472   3*3*32*32+32   =     9,248
#   encoder 64:   3*3*32*64+64    =    18,496   3*3*64*64+64   =    36,928
#   encoder 128:  3*3*64*128+128  =    73,856   3*3*128*128+128=   147,584
#   encoder 256:  3*3*128*256+256 =   295,168   3*3*256*256+256=   590,080
#   bottleneck:   3*3*256*512+512 = 1,180,160   3*3*512*512+512= 2,359,808
#   up 256: 2*2*512*256+256 = 524,544; 3*3*512*256+256 = 1,179,904; 3*3*256*256+256 = 590,080
#   up 128: 2*2*256*128+128 = 131,200; 3*3*256*128+128 =   295,040; 3*3*128*128+128 = 147,584
#   up 64:  2*2*128*64+64   =  32,832; 3*3*128*64+64   =    73,792; 3*3*64*64+64    =  36,928
#   up 32:  2*2*64*32+32    =   8,224; 3*3*64*32+32    =    18,464; 3*3*32*32+32    =   9,248
#   head:   1*1*32*1+1      =      33
UNET_5_LAYER_PARAMS = [
    1_472, 9_248, 18_496, 36_928, 73_856, 147_584, 295_168, 590_080, 1_180_160, 2_359_808,
    524_544, 1_179_904, 590_080, 131_200, 295_040, 147_584, 32_832, 73_792, 36_928,
    8_224, 18_464, 9_248, 33,
]
UNET_5_PARAMS = 7_760_673


def test_unet_parameter_count_is_7_760_673_for_5_channels(initialised):
  layers = _unet_layers(5)
  assert [_conv(k, cin, cout) for _, k, cin, cout in layers] == UNET_5_LAYER_PARAMS
  assert sum(UNET_5_LAYER_PARAMS) == UNET_5_PARAMS
  assert _count(initialised["unet"]["params"]) == UNET_5_PARAMS


def test_unet_layers_match_the_arithmetic(initialised):
  variables = initialised["unet"]
  assert set(variables) == {"params"}  # no batch_stats: no BatchNorm, as in the paper's Table 2
  flat = _flat(variables["params"])
  assert not any("BatchNorm" in name for path in flat for name in path)
  kernels = {path[:-1]: shape for path, shape in flat.items() if path[-1] == "kernel"}
  assert all(flat[module + ("bias",)] == (shape[-1],) for module, shape in kernels.items())
  kinds = collections.Counter(
      ("convT" if module[-1].startswith("ConvTranspose") else "conv", shape[0])
      for module, shape in kernels.items())
  assert kinds == {("conv", 3): 18, ("convT", 2): 4, ("conv", 1): 1}
  assert sum(kinds.values()) == 23
  # Every kernel of the tree is one of the arithmetic's layers, and vice versa.
  expected = sorted((k, k, cin, cout) for _, k, cin, cout in _unet_layers(5))
  assert sorted(kernels.values()) == expected


@pytest.mark.parametrize("channels", [3, 14])
def test_unet_channel_count_changes_only_the_first_layer(channels):
  base, other = _flat(_abstract(UNet(), 5)["params"]), _flat(_abstract(UNet(), channels)["params"])
  assert set(base) == set(other)
  changed = {path for path in base if base[path] != other[path]}
  assert changed == {("Conv_0", "kernel")}
  assert other[("Conv_0", "kernel")] == (3, 3, channels, 32)
  # First layer 3*3*c*32 + 32: each extra input channel adds 3*3*32 = 288 parameters.
  arithmetic = sum(_conv(k, cin, cout) for _, k, cin, cout in _unet_layers(channels))
  assert arithmetic == UNET_5_PARAMS + 288 * (channels - 5)
  assert _count(_abstract(UNet(), channels)["params"]) == arithmetic


# --------------------------------------------------------------------------------------------------------
# ResU-Net: 8,052,609 parameters for 5 channels.


def _resunet_layers(c: int) -> list[tuple]:
  """(kind, ...) of every ResU-Net parameter group for `c` input channels, in network order.

  ('conv3', cin, cout): 3x3 main-path conv with bias; ('proj', cin, cout): 1x1 projection shortcut with
  bias; ('bn', features): BatchNorm scale + bias; ('convT', cin, cout): 2x2 transposed conv with bias;
  ('head', cin, 1): the 1x1 output conv.
  """
  layers = []

  def unit(cin, cout, first=False):
    if not first:  # pre-activation: BN -> ReLU on the unit's input (not on the raw image)
      layers.append(("bn", cin))
    layers.extend([("conv3", cin, cout), ("bn", cout), ("conv3", cout, cout),
                   ("proj", cin, cout), ("bn", cout)])  # shortcut: 1x1 conv + BN

  unit(c, 64, first=True)
  unit(64, 128)
  unit(128, 256)
  unit(256, 512)  # bridge
  for cin, cout in ((512, 256), (256, 128), (128, 64)):
    layers.append(("convT", cin, cout))
    unit(2 * cout, cout)  # after concatenation with the encoder output of the same size
  layers.append(("head", 64, 1))
  return layers


def _resunet_params(layers) -> dict[str, int]:
  sizes = {"conv3": lambda cin, cout: _conv(3, cin, cout), "proj": lambda cin, cout: _conv(1, cin, cout),
           "convT": lambda cin, cout: _conv(2, cin, cout), "head": lambda cin, cout: _conv(1, cin, cout),
           "bn": lambda features: 2 * features}
  totals = collections.Counter()
  for kind, *dims in layers:
    totals[kind] += sizes[kind](*dims)
  return dict(totals)


# The arithmetic for 5 channels, per unit: conv1 3*3*cin*cout+cout, conv2 3*3*cout*cout+cout, projection
# 1*1*cin*cout+cout, BN 2*cin (input; not in the first unit) + 2*cout (middle) + 2*cout (shortcut):
#   unit 1 (5->64, first):  2,944 +    36,928 +   384 +   256 =    40,512
#   unit 2 (64->128):      73,856 +   147,584 + 8,320 +   640 =   230,400
#   unit 3 (128->256):    295,168 +   590,080 + 33,024 + 1,280 =  919,552
#   bridge (256->512):  1,180,160 + 2,359,808 + 131,584 + 2,560 = 3,674,112
#   up 512->256 2*2*512*256+256 = 524,544; unit 5 (512->256): 1,179,904 + 590,080 + 131,328 + 2,048
#                                                             = 1,903,360
#   up 256->128 2*2*256*128+128 = 131,200; unit 6 (256->128): 295,040 + 147,584 + 32,896 + 1,024 = 476,544
#   up 128->64  2*2*128*64+64   =  32,832; unit 7 (128->64):   73,792 +  36,928 +  8,256 +   512 = 119,488
#   head 1*1*64*1+1 = 65
# By kind: 14 3x3 convs 7,009,856 + 7 projections 345,792 + 20 BN (4,160 features) 8,320
#          + 3 transposed convs 688,576 + head 65 = 8,052,609.
RESUNET_5_BY_KIND = {"conv3": 7_009_856, "proj": 345_792, "bn": 8_320, "convT": 688_576, "head": 65}
RESUNET_5_PARAMS = 8_052_609


def test_resunet_parameter_count_for_5_channels(initialised):
  assert _resunet_params(_resunet_layers(5)) == RESUNET_5_BY_KIND
  assert sum(RESUNET_5_BY_KIND.values()) == RESUNET_5_PARAMS
  assert (40_512 + 230_400 + 919_552 + 3_674_112 + 524_544 + 1_903_360 + 131_200 + 476_544 + 32_832
          + 119_488 + 65) == RESUNET_5_PARAMS
  assert _count(initialised["resunet"]["params"]) == RESUNET_5_PARAMS


@pytest.mark.parametrize("channels", [3, 14])
def test_resunet_channel_count_changes_only_the_first_unit(channels):
  # The image feeds the first 3x3 conv (3*3*c*64) and the first projection (1*1*c*64): 640 per channel.
  arithmetic = sum(_resunet_params(_resunet_layers(channels)).values())
  assert arithmetic == RESUNET_5_PARAMS + 640 * (channels - 5)
  assert _count(_abstract(ResUNet(), channels)["params"]) == arithmetic
  base, other = _flat(_abstract(ResUNet(), 5)), _flat(_abstract(ResUNet(), channels))
  changed = {path for path in base if base[path] != other[path]}
  assert changed == {("params", "ResidualUnit_0", "Conv_0", "kernel"),
                     ("params", "ResidualUnit_0", "Conv_2", "kernel")}


def test_resunet_layers_match_the_arithmetic(initialised):
  variables = initialised["resunet"]
  flat = _flat(variables["params"])
  kernels = {path[:-1]: shape for path, shape in flat.items() if path[-1] == "kernel"}
  kinds = collections.Counter()
  for module, shape in kernels.items():
    assert flat[module + ("bias",)] == (shape[-1],)  # every conv has a bias
    if module[-1].startswith("ConvTranspose"):
      kinds["convT", shape[:2]] += 1
    elif len(module) == 1:  # a conv outside the residual units: the head
      kinds["head", shape] += 1
    else:  # inside a unit, Conv_0 and Conv_1 are the main path, Conv_2 the shortcut
      kinds["proj" if module[-1] == "Conv_2" else "main", shape[:2]] += 1
  assert kinds == {("main", (3, 3)): 14, ("head", (1, 1, 64, 1)): 1, ("proj", (1, 1)): 7,
                   ("convT", (2, 2)): 3}
  main_path_convs = kinds["main", (3, 3)] + kinds["head", (1, 1, 64, 1)]
  assert main_path_convs == 15

  # The tree's layers are exactly the arithmetic's, kernel by kernel and BatchNorm by BatchNorm.
  tree_convs = sorted((shape[0], shape[2], shape[3]) for shape in kernels.values())
  layer_k = {"conv3": 3, "proj": 1, "convT": 2, "head": 1}
  arithmetic_convs = sorted((layer_k[kind], *dims) for kind, *dims in _resunet_layers(5) if kind != "bn")
  assert tree_convs == arithmetic_convs
  tree_bn = sorted(shape[0] for path, shape in flat.items() if path[-1] == "scale")
  assert tree_bn == sorted(dims[0] for kind, *dims in _resunet_layers(5) if kind == "bn")
  assert all(flat[path[:-1] + ("bias",)] == shape for path, shape in flat.items() if path[-1] == "scale")

  # BatchNorm running statistics: a mean and a variance per BN feature (20 layers, 4,160 features).
  stats = _flat(variables["batch_stats"])
  assert {path[-1] for path in stats} == {"mean", "var"}
  assert sum(np.prod(s) for path, s in stats.items() if path[-1] == "mean") == 4_160
  assert sum(np.prod(s) for path, s in stats.items() if path[-1] == "var") == 4_160
  assert {path[:-1] for path in stats} == {path[:-1] for path in flat if path[-1] == "scale"}


def _module_calls(model, variables, x, train=False):
  """(path, class name, input, output) of every Conv/ConvTranspose/BatchNorm/ResidualUnit call, in order."""
  calls = []

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__":
      calls.append((context.module.path, type(context.module).__name__, args[0], out))
    return out

  with nn.intercept_methods(interceptor):
    model.apply(variables, x, train=train)
  return calls


@pytest.fixture(scope="module")
def resunet_calls():
  model = ResUNet()
  variables = _filled(_abstract(model, 5))
  # Non-trivial running statistics, so that the eval-mode BatchNorm is not the identity.
  rng = np.random.default_rng(1)
  variables["batch_stats"] = jax.tree_util.tree_map_with_path(
      lambda p, s: jnp.asarray(rng.normal(0, 0.2, s.shape) + (1.5 if p[-1].key == "var" else 0.0),
                               jnp.float32), variables["batch_stats"])
  return _module_calls(model, variables, _images(1, 32, 5))


def test_resunet_units_are_pre_activation_and_the_first_starts_with_a_conv(resunet_calls):
  by_unit = collections.defaultdict(list)
  for path, kind, x, y in resunet_calls:
    if len(path) == 2 and path[0].startswith("ResidualUnit"):
      by_unit[path[0]].append((path[1], kind, x, y))
  assert len(by_unit) == 7
  for unit, calls in by_unit.items():
    order = [name for name, *_ in calls]
    if unit == "ResidualUnit_0":
      # The raw image goes straight into a conv: no BN/ReLU on the input bands.
      assert order == ["Conv_0", "BatchNorm_0", "Conv_1", "Conv_2", "BatchNorm_1"]
      assert calls[0][2].shape[-1] == 5
      bn_mid, shortcut_bn = "BatchNorm_0", "BatchNorm_1"
    else:
      # Pre-activation: BN first, on the unit's input; the shortcut conv also reads that input.
      assert order == ["BatchNorm_0", "Conv_0", "BatchNorm_1", "Conv_1", "Conv_2", "BatchNorm_2"]
      np.testing.assert_array_equal(calls[0][2], calls[4][2])
      # The first conv reads ReLU(BN(input)).
      np.testing.assert_array_equal(calls[1][2], jax.nn.relu(calls[0][3]))
      bn_mid, shortcut_bn = "BatchNorm_1", "BatchNorm_2"
    out = {name: (x, y) for name, _, x, y in calls}
    np.testing.assert_array_equal(out["Conv_1"][0], jax.nn.relu(out[bn_mid][1]))  # BN -> ReLU -> conv
    np.testing.assert_array_equal(out[shortcut_bn][0], out["Conv_2"][1])  # 1x1 conv -> BN shortcut
    unit_output = [y for path, kind, _, y in resunet_calls if path == (unit,)][0]
    # Pre-activation: the sum is the unit's output, with no ReLU after the addition.
    np.testing.assert_allclose(unit_output, out["Conv_1"][1] + out[shortcut_bn][1], rtol=1e-6)
    assert float(jnp.min(unit_output)) < 0


def test_resunet_downsamples_by_stride_2_convs(resunet_calls):
  unit_outputs = {path[0]: y for path, kind, _, y in resunet_calls if kind == "ResidualUnit"}
  # Encoder units 1-3 and the bridge: full, 1/2, 1/4 and 1/8 of the 32x32 input; decoder back up.
  sizes = [unit_outputs[f"ResidualUnit_{i}"].shape[1:3] for i in range(7)]
  assert sizes == [(32, 32), (16, 16), (8, 8), (4, 4), (8, 8), (16, 16), (32, 32)]
  for path, kind, x, y in resunet_calls:
    if kind == "Conv" and len(path) == 2 and path[1] in ("Conv_0", "Conv_2"):
      unit = int(path[0].split("_")[1])
      stride = 2 if unit in (1, 2, 3) else 1
      # The unit's first conv and its shortcut halve the size together (they are summed).
      assert y.shape[1] * stride == x.shape[1], (path, x.shape, y.shape)


def test_resunet_has_no_pooling_unlike_unet():
  x = _images(1, 32, 5)

  def jaxpr(model):
    abstract = _abstract(model, 5)
    return str(jax.make_jaxpr(lambda v, x: model.apply(v, x))(abstract, x))

  assert "reduce_window" in jaxpr(UNet())  # max-pooling shows up as reduce_window ...
  assert "reduce_window" not in jaxpr(ResUNet())  # ... and ResU-Net has none


# --------------------------------------------------------------------------------------------------------
# Both models: output shape and dtype.


@pytest.mark.parametrize("name", ["unet", "resunet"])
@pytest.mark.parametrize("size,channels", [(32, 5), (64, 5), (128, 5), (32, 3), (64, 14), (128, 3)])
def test_output_is_one_float32_logit_per_pixel(name, size, channels):
  model = create_model(name)
  variables = _filled(_abstract(model, channels))
  y = jax.jit(model.apply)(variables, _images(2, size, channels))
  assert y.shape == (2, size, size, 1)
  assert y.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(y)))
  assert float(jnp.std(y)) > 0  # not a constant map


# --------------------------------------------------------------------------------------------------------
# ResU-Net BatchNorm: batch statistics in training, running statistics in evaluation.


def _unit_input_stats(model, variables, x):
  """Train-mode forward with the intermediates: (logits, new batch_stats, ResidualUnit_0 output)."""
  y, state = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                         capture_intermediates=lambda mdl, method: mdl.path == ("ResidualUnit_0",))
  return y, state["batch_stats"], state["intermediates"]["ResidualUnit_0"]["__call__"][0]


def test_resunet_train_mode_uses_batch_statistics_and_updates_them():
  model = ResUNet()
  variables = _filled(_abstract(model, 5))
  a, b, c = _images(1, 32, 5, seed=1), _images(1, 32, 5, seed=2), _images(1, 32, 5, seed=3) * 3 + 1
  train = jax.jit(lambda v, x: _unit_input_stats(model, v, x))

  y_ab, stats_ab, unit0 = train(variables, jnp.concatenate([a, b]))
  y_ac, _, _ = train(variables, jnp.concatenate([a, c]))
  # Same example, different batch-mates: different output, since BN normalises with batch statistics.
  assert float(jnp.max(jnp.abs(y_ab[0] - y_ac[0]))) > 1e-3

  # Every running statistic moved; the second unit's input BN exactly by momentum 0.9 from (0, 1).
  for old, new in zip(jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(stats_ab)):
    assert not np.allclose(old, new)
  unit0 = np.asarray(unit0, np.float64)
  got = stats_ab["ResidualUnit_1"]["BatchNorm_0"]
  np.testing.assert_allclose(got["mean"], 0.1 * unit0.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(got["var"], 0.9 + 0.1 * unit0.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)

  # Evaluation with the updated running statistics: each example's output ignores its batch-mates.
  trained = {"params": variables["params"], "batch_stats": stats_ab}
  evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
  e_ab = evaluate(trained, jnp.concatenate([a, b]))
  e_ac = evaluate(trained, jnp.concatenate([a, c]))
  e_a = evaluate(trained, a)
  np.testing.assert_allclose(e_ab[0], e_ac[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(e_ab[0], e_a[0], rtol=1e-5, atol=1e-5)
  # ... and it is not the train-mode function.
  assert float(jnp.max(jnp.abs(e_ab[0] - y_ab[0]))) > 1e-3


def test_resunet_under_pmap_uses_cross_device_batch_statistics():
  """With axis_name='batch' under pmap, train mode equals the unsplit model on the global batch."""
  devices = jax.local_devices()
  n = len(devices)
  model = ResUNet(axis_name="batch")
  variables = _filled(_abstract(model, 5))
  x = _images(2 * n, 32, 5, seed=4)

  def train(v, xb):
    return model.apply(v, xb, train=True, mutable=["batch_stats"])

  replicated = jax.tree.map(lambda leaf: jnp.stack([leaf] * n), variables)
  y, updates = jax.pmap(train, axis_name="batch")(replicated, x.reshape(n, 2, 32, 32, 5))
  assert y.shape == (n, 2, 32, 32, 1) and y.dtype == jnp.float32

  y_ref, updates_ref = jax.jit(lambda v, x: ResUNet().apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  np.testing.assert_allclose(y.reshape(y_ref.shape), y_ref, rtol=1e-4, atol=1e-4)
  for got, want in zip(jax.tree.leaves(updates), jax.tree.leaves(updates_ref)):
    for replica in np.asarray(got):
      np.testing.assert_allclose(replica, want, rtol=1e-4, atol=1e-5)

  # With a single CPU device the comparison above cannot tell whether the statistics cross devices, so
  # check the traced program: each of the 20 BatchNorms averages over the axis (models.layers.BatchNorm
  # sums count, sum and sum of squares together: one psum per BatchNorm).
  jaxpr = str(jax.make_jaxpr(train, axis_env=[("batch", n)])(variables, x[:2]))
  assert jaxpr.count("psum[axes=('batch',)") == 20
  eval_jaxpr = str(jax.make_jaxpr(lambda v, xb: model.apply(v, xb, train=False),
                                  axis_env=[("batch", n)])(variables, x[:2]))
  assert "psum" not in eval_jaxpr


# --------------------------------------------------------------------------------------------------------
# Registry.


def test_create_model_rejects_unknown_names_listing_the_valid_ones():
  with pytest.raises(ValueError, match="nope") as info:
    create_model("nope")
  for name in MODELS:
    assert name in str(info.value)
  assert set(MODELS) == {"unet", "resunet"}
  assert isinstance(create_model("unet"), UNet)
  assert isinstance(create_model("resunet", axis_name="batch"), ResUNet)
  assert create_model("resunet", axis_name="batch").axis_name == "batch"


# --------------------------------------------------------------------------------------------------------
# Decoders: models.layers.UpConv2x2 in place of nn.ConvTranspose, with the same parameter tree, outputs
# and checkpoints.


def _legacy_upconv(features: int, dtype=None, name=None) -> nn.Module:
  """What the decoders built before UpConv2x2: flax's ConvTranspose, auto-named (`name` is dropped, so
  the reference tree keeps flax's own names rather than the ones the models now pass)."""
  del name
  return nn.ConvTranspose(features, (2, 2), strides=(2, 2), dtype=dtype)


@pytest.fixture
def legacy():
  """A context in which both models build their decoders with nn.ConvTranspose, as before."""

  @contextlib.contextmanager
  def context():
    with pytest.MonkeyPatch.context() as patch:
      for name in ("unet", "resunet"):
        patch.setattr(importlib.import_module(f"landslide_jax.models.{name}"), "UpConv2x2", _legacy_upconv)
      yield

  return context


@pytest.fixture(params=["matmul", "conv"])
def upconv_impl(request, monkeypatch):
  """Runs a test with each of UpConv2x2's forms as the CPU's `auto` choice."""
  monkeypatch.setattr(layers, "UPCONV_IMPL_BY_BACKEND", {"cpu": request.param})
  return request.param


def _up_calls(model, variables, x) -> list[tuple[tuple[str, ...], str]]:
  return [(path, kind) for path, kind, _, _ in _module_calls(model, variables, x)
          if kind in ("UpConv2x2", "ConvTranspose")]


@pytest.mark.parametrize("name", ["unet", "resunet"])
@pytest.mark.parametrize("channels", [5, 14])
def test_decoder_parameter_tree_is_the_conv_transpose_one(name, channels, legacy):
  with legacy():
    old = _abstract(create_model(name), channels)
  new = _abstract(create_model(name), channels)
  assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(old)
  assert _flat(new) == _flat(old)  # every path and shape, batch_stats included
  ups = sorted(path for path in _flat(new["params"]) if path[-2].startswith("ConvTranspose"))
  count = {"unet": 4, "resunet": 3}[name]
  assert ups == sorted((f"ConvTranspose_{i}", leaf) for i in range(count) for leaf in ("bias", "kernel"))


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_decoder_init_gives_the_conv_transpose_values(name, legacy):
  """The same key initialises the same parameters. Narrow models and an 'rbg' key keep it quick: the
  full models' threefry init took 40 s and more to compile here."""
  narrow = {"unet": {"features": (2, 3, 4, 5), "bottleneck": 6},
            "resunet": {"encoder": (2, 3, 4), "bridge": 5}}[name]
  x = jnp.zeros((1, 16, 16, 5))
  key = jax.random.key(7, impl="rbg")
  with legacy():
    old = create_model(name, **narrow).init(key, x)
  new = create_model(name, **narrow).init(key, x)
  assert jax.tree_util.tree_structure(new) == jax.tree_util.tree_structure(old)
  for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_decoder_outputs_equal_the_conv_transpose_model(name, legacy, upconv_impl):
  model = create_model(name)
  variables = _filled(_abstract(model, 5), seed=3)
  x = _images(2, 32, 5, seed=5)
  with legacy():
    old_model = create_model(name)
    old_calls = _up_calls(old_model, variables, x)
    old_eval = jax.jit(lambda v, x_: old_model.apply(v, x_))(variables, x)
    old_train = jax.jit(lambda v, x_: old_model.apply(v, x_, train=True, mutable=["batch_stats"]))(
        variables, x)
  new_calls = _up_calls(model, variables, x)
  # The decoders really changed layer (and kept the names), so the comparison below is not vacuous.
  assert [path for path, _ in new_calls] == [path for path, _ in old_calls]
  assert {kind for _, kind in old_calls} == {"ConvTranspose"}
  assert {kind for _, kind in new_calls} == {"UpConv2x2"}

  new_eval = jax.jit(lambda v, x_: model.apply(v, x_))(variables, x)
  new_train = jax.jit(lambda v, x_: model.apply(v, x_, train=True, mutable=["batch_stats"]))(variables, x)
  if upconv_impl == "conv":  # the very same operations as nn.ConvTranspose: bit for bit
    for got, want in zip(jax.tree.leaves((new_eval, new_train)), jax.tree.leaves((old_eval, old_train))):
      np.testing.assert_array_equal(got, want)
  else:  # float32 round-off of a different summation order, carried through the network
    for got, want in zip(jax.tree.leaves((new_eval, new_train)), jax.tree.leaves((old_eval, old_train))):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(want))))
  assert float(jnp.std(new_eval)) > 0


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_checkpoint_of_the_conv_transpose_model_restores_into_the_new_one(name, legacy, tmp_path):
  """A checkpoint written by training's own manager from the nn.ConvTranspose model restores, as
  `evaluate.load_run` restores it, into the current model, which predicts what the old one did."""

  def state_of(model, variables):
    return train.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optax.adam(1e-3),
                                   batch_stats=variables.get("batch_stats"))

  x = _images(2, 32, 5, seed=9)
  with legacy():
    old_model = create_model(name)
    old_state = state_of(old_model, _filled(_abstract(old_model, 5), seed=1))
    old_logits = jax.jit(lambda s, x_: train.apply_model(s, s.params, x_, train=False)[0])(old_state, x)
  manager = train.checkpoint_manager(tmp_path)
  manager.save(3, args=ocp.args.StandardSave(train.checkpoint_item(
      old_state, 3, early_stopping.EarlyStopping(), 1.0)), metrics={"val_loss": 0.5})
  manager.close()

  # The template holds other values (seed 2), so that equal parameters below come from the checkpoint.
  model = create_model(name)
  template = state_of(model, _filled(_abstract(model, 5), seed=2))
  manager = train.checkpoint_manager(tmp_path)
  restored = manager.restore(manager.best_step(), args=ocp.args.StandardRestore(train.checkpoint_item(
      template, 0, early_stopping.EarlyStopping(), 1.0)))["state"]
  manager.close()
  for got, want in zip(jax.tree.leaves((restored.params, restored.batch_stats)),
                       jax.tree.leaves((old_state.params, old_state.batch_stats))):
    np.testing.assert_array_equal(got, want)
  logits = jax.jit(lambda s, x_: train.apply_model(s, s.params, x_, train=False)[0])(restored, x)
  np.testing.assert_allclose(logits, old_logits, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(old_logits))))


# --------------------------------------------------------------------------------------------------------
# 3x3 convs: nn.Conv with layers.conv_general_dilated (the kernel gradient as matmuls on CPU).


@pytest.mark.parametrize("name", ["unet", "resunet"])
def test_matmul_kernel_gradients_leave_outputs_and_change_gradients_by_round_off_only(name, monkeypatch):
  model = create_model(name)
  variables = _filled(_abstract(model, 5), seed=3)
  x = _images(2, 32, 5, seed=5)

  def outputs_and_grads():
    """A new function per call, so that each threshold is traced anew."""
    def loss(v, x_):
      logits, _ = model.apply(v, x_, train=True, mutable=["batch_stats"])
      return jnp.sum(jnp.sin(logits)), logits
    return jax.jit(jax.grad(loss, has_aux=True))(variables, x)

  monkeypatch.setattr(layers, "KERNEL_GRAD_MATMUL_MIN_CHANNELS", {})  # XLA's gradient everywhere
  want_grads, want_logits = outputs_and_grads()
  monkeypatch.setattr(layers, "KERNEL_GRAD_MATMUL_MIN_CHANNELS", {"cpu": 1})  # matmuls everywhere
  got_grads, got_logits = outputs_and_grads()
  # The forward pass is the same program: a checkpoint evaluates exactly as before.
  np.testing.assert_array_equal(got_logits, want_logits)
  assert jax.tree.structure(got_grads) == jax.tree.structure(want_grads)
  for got, want in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(want))))
  assert float(jnp.max(jnp.abs(got_grads["params"]["Conv_0"]["kernel"]))) > 0
