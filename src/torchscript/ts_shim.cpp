/* ts_shim.cpp — the only file that includes libtorch: load a torch.jit.save
 * archive on the CPU and read back what decompd needs from it, behind the C
 * ABI of ts_shim.h.
 *
 * What it reads:
 * - the layer spec, the way python/decompd/spec.py's layer_spec() makes it
 *   from a live module: every module (once, under its first name in
 *   named_modules() order) that holds parameters of its own; torch's own
 *   Conv2d with all its fields, the others with their class name;
 * - the tensors, the way module.state_dict() lists them: per module its
 *   parameters, then its buffers, in slot order, then its submodules.
 * The root module is the exception: the engine names every layer, so a root
 * holding parameters is left out of the spec, unless the whole archive is a
 * bare Conv2d, which is called "conv" (layer and tensor names), as
 * python/decompd calls a bare conv when it hands it to the engine.
 *
 * Where a Conv2d's fields come from depends on how the archive was made.
 * torch.jit.script keeps nn.Conv2d's __constants__ (in_channels, stride,
 * padding, padding_mode, …) as constants of the module's class type.
 * torch.jit.trace keeps none of them: the fields are read back from the
 * forward graph the tracer recorded (aten::_convolution or
 * aten::_convolution_mode with constant arguments, preceded by aten::pad for
 * a non-zeros padding mode) and from the weight's shape. A traced conv whose
 * forward was never called has no graph; it is listed with a type that the
 * engine does not decompose, and a note says why.
 *
 * Every libtorch exception is caught here; none crosses the C ABI. */
#include "ts_shim.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/script.h>

#include <cstdio>
#include <cstring>
#include <deque>
#include <new>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

namespace {

const char kTorchConv2d[] = "__torch__.torch.nn.modules.conv.Conv2d";
const char kTorchLinear[] = "__torch__.torch.nn.modules.linear.Linear";
const char kRootName[] = "conv";

/* The conv2d calls a traced Conv2d's forward can hold. */
enum class ConvCall { Convolution, ConvolutionMode, Conv2d, None };

struct Failure {
  int status;
  std::string msg;
};

} // namespace

struct ts_model {
  torch::jit::Module module;
  std::deque<std::string> strings; /* stable storage for the C strings */
  std::vector<ts_layer> layers;
  std::vector<ts_tensor> infos;
  std::vector<at::Tensor> tensors;
  std::vector<std::string> notes;
  at::Tensor scratch;     /* the last contiguous copy handed out */
  bool root_conv = false; /* the archive is a bare Conv2d */
  std::set<std::vector<int64_t>> param_sets; /* modules listed, by params */

  const char *keep(std::string s) {
    strings.push_back(std::move(s));
    return strings.back().c_str();
  }
};

namespace {

void set_err(char *err, size_t errlen, const std::string &msg) {
  if (err && errlen)
    std::snprintf(err, errlen, "%s", msg.c_str());
}

/* The qualified class name without the "___torch_mangle_N" parts that
 * scripting and tracing insert to keep class names unique. */
std::string demangle(const std::string &q) {
  std::string out;
  size_t start = 0;
  while (start <= q.size()) {
    size_t dot = q.find('.', start);
    if (dot == std::string::npos)
      dot = q.size();
    std::string part = q.substr(start, dot - start);
    if (part.rfind("___torch_mangle_", 0) != 0) {
      if (!out.empty())
        out += '.';
      out += part;
    }
    start = dot + 1;
  }
  return out;
}

std::string class_name(const c10::ClassTypePtr &t) {
  auto n = t->name();
  return n ? demangle(n->qualifiedName()) : std::string("<anonymous>");
}

/* One line out of a libtorch error: TorchScript interpreter errors carry a
 * serialized-code traceback whose last line is the error itself; other
 * errors say it on their first line. */
std::string one_line(const std::string &what) {
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < what.size()) {
    size_t nl = what.find('\n', start);
    if (nl == std::string::npos)
      nl = what.size();
    std::string l = what.substr(start, nl - start);
    size_t a = l.find_first_not_of(" \t\r");
    if (a != std::string::npos)
      lines.push_back(l.substr(a));
    start = nl + 1;
  }
  if (lines.empty())
    return "unknown error";
  bool traceback = what.find("Traceback of TorchScript") != std::string::npos;
  std::string l = traceback ? lines.back() : lines.front();
  if (l.size() > 400)
    l = l.substr(0, 400) + "…";
  return l;
}

bool is_alloc_failure(const std::string &what) {
  return what.find("can't allocate memory") != std::string::npos ||
         what.find("std::bad_alloc") != std::string::npos ||
         what.find("not enough memory") != std::string::npos;
}

bool to_dtype(at::ScalarType s, decomp_dtype *out) {
  switch (s) {
  case at::kFloat:
    *out = DECOMP_DTYPE_F32;
    return true;
  case at::kHalf:
    *out = DECOMP_DTYPE_F16;
    return true;
  case at::kBFloat16:
    *out = DECOMP_DTYPE_BF16;
    return true;
  case at::kDouble:
    *out = DECOMP_DTYPE_F64;
    return true;
  case at::kLong:
    *out = DECOMP_DTYPE_I64;
    return true;
  case at::kInt:
    *out = DECOMP_DTYPE_I32;
    return true;
  case at::kShort:
    *out = DECOMP_DTYPE_I16;
    return true;
  case at::kChar:
    *out = DECOMP_DTYPE_I8;
    return true;
  case at::kByte:
    *out = DECOMP_DTYPE_U8;
    return true;
  case at::kBool:
    *out = DECOMP_DTYPE_BOOL;
    return true;
  default:
    return false;
  }
}

/* An int or a pair of ints (int, tuple or list) as [h, w]. */
bool to_pair(const c10::IValue &v, int64_t out[2]) {
  std::vector<int64_t> xs;
  if (v.isInt()) {
    xs = {v.toInt(), v.toInt()};
  } else if (v.isTuple()) {
    for (const auto &e : v.toTupleRef().elements()) {
      if (!e.isInt())
        return false;
      xs.push_back(e.toInt());
    }
  } else if (v.isIntList()) {
    xs = v.toIntVector();
  } else {
    return false;
  }
  if (xs.size() == 1)
    xs.push_back(xs[0]);
  if (xs.size() != 2)
    return false;
  out[0] = xs[0];
  out[1] = xs[1];
  return true;
}

/* A constant argument of a graph node: prim::Constant, or a
 * prim::ListConstruct of constants. */
c10::optional<c10::IValue> const_arg(const torch::jit::Value *v) {
  const torch::jit::Node *n = v->node();
  if (n->kind() == c10::prim::ListConstruct) {
    std::vector<int64_t> xs;
    for (const torch::jit::Value *in : n->inputs()) {
      auto iv = torch::jit::toIValue(in);
      if (!iv || !iv->isInt())
        return c10::nullopt;
      xs.push_back(iv->toInt());
    }
    return c10::IValue(xs);
  }
  return torch::jit::toIValue(v);
}

/* A field of a scripted module: a class constant, else an attribute. */
c10::optional<c10::IValue> field(const torch::jit::Module &m,
                                 const std::string &name) {
  const c10::ClassTypePtr &t = m.type();
  if (t->hasConstant(name))
    return t->getConstant(name);
  if (auto slot = t->findAttributeSlot(name))
    return m._ivalue()->getSlot(*slot);
  return c10::nullopt;
}

bool has_tensor_slot(const torch::jit::Module &m, const char *name) {
  auto slot = m.type()->findAttributeSlot(name);
  return slot && m._ivalue()->getSlot(*slot).isTensor();
}

bool padding_mode_ok(const std::string &s) {
  return s == "zeros" || s == "reflect" || s == "replicate" || s == "circular";
}

/* A Linear's features from its weight [out, in], and its bias. */
bool linear_from_weight(const torch::jit::Module &m, ts_layer *l) {
  at::Tensor w = m.attr("weight").toTensor();
  if (w.dim() != 2)
    return false;
  l->out_channels = w.size(0);
  l->in_channels = w.size(1);
  l->bias = has_tensor_slot(m, "bias");
  return true;
}

/* Conv2d fields from a scripted module's constants. */
bool conv_from_attributes(const torch::jit::Module &m, ts_model *model,
                          ts_layer *l) {
  static const char *const names[] = {
      "in_channels", "out_channels", "kernel_size", "stride",
      "padding",     "dilation",     "groups",      "padding_mode"};
  c10::IValue v[8];
  for (int i = 0; i < 8; i++) {
    auto f = field(m, names[i]);
    if (!f)
      return false;
    v[i] = *f;
  }
  if (!v[0].isInt() || !v[1].isInt() || !v[6].isInt() || !v[7].isString())
    return false;
  l->in_channels = v[0].toInt();
  l->out_channels = v[1].toInt();
  l->groups = v[6].toInt();
  if (!to_pair(v[2], l->kernel_size) || !to_pair(v[3], l->stride) ||
      !to_pair(v[5], l->dilation))
    return false;
  if (v[4].isString()) {
    const std::string &p = v[4].toStringRef();
    if (p == "same")
      l->padding_kind = DECOMP_PADDING_SAME;
    else if (p == "valid")
      l->padding_kind = DECOMP_PADDING_VALID;
    else
      return false;
  } else if (!to_pair(v[4], l->padding)) {
    return false;
  }
  std::string mode = v[7].toStringRef();
  if (!padding_mode_ok(mode))
    return false;
  l->padding_mode = model->keep(mode);
  l->source = "attributes";
  return true;
}

bool is_self_weight(const torch::jit::Value *v) {
  const torch::jit::Node *n = v->node();
  return n->kind() == c10::prim::GetAttr && n->s(c10::attr::name) == "weight";
}

/* Conv2d fields from a traced module's forward graph and weight shape. */
bool conv_from_graph(const torch::jit::Module &m, const std::string &name,
                     ts_model *model, ts_layer *l) {
  auto fwd = m.find_method("forward");
  if (!fwd)
    return false;
  std::shared_ptr<torch::jit::Graph> g = fwd->graph();
  const torch::jit::Node *conv = nullptr;
  ConvCall call = ConvCall::None;
  for (const torch::jit::Node *n : g->nodes()) {
    ConvCall c = ConvCall::None;
    std::string kind = n->kind().toQualString();
    if (kind == "aten::_convolution" || kind == "aten::convolution")
      c = ConvCall::Convolution;
    else if (kind == "aten::_convolution_mode")
      c = ConvCall::ConvolutionMode;
    else if (kind == "aten::conv2d")
      c = ConvCall::Conv2d;
    if (c == ConvCall::None || n->inputs().size() < 7 ||
        !is_self_weight(n->input(1)))
      continue;
    if (conv) {
      model->notes.push_back(name + ": forward calls its weight twice");
      return false;
    }
    conv = n;
    call = c;
  }
  if (!conv)
    return false;

  auto wslot = m.type()->findAttributeSlot("weight");
  if (!wslot || !m._ivalue()->getSlot(*wslot).isTensor())
    return false;
  at::Tensor w = m._ivalue()->getSlot(*wslot).toTensor();
  if (w.dim() != 4)
    return false;

  auto stride = const_arg(conv->input(3));
  auto padding = const_arg(conv->input(4));
  auto dilation = const_arg(conv->input(5));
  c10::optional<c10::IValue> groups;
  if (call == ConvCall::Convolution) {
    auto transposed = const_arg(conv->input(6));
    if (!transposed || !transposed->isBool() || transposed->toBool() ||
        conv->inputs().size() < 9)
      return false;
    groups = const_arg(conv->input(8));
  } else {
    groups = const_arg(conv->input(6));
  }
  if (!stride || !padding || !dilation || !groups || !groups->isInt())
    return false;
  if (!to_pair(*stride, l->stride) || !to_pair(*dilation, l->dilation))
    return false;
  l->groups = groups->toInt();
  if (padding->isString()) {
    const std::string &p = padding->toStringRef();
    if (p == "same")
      l->padding_kind = DECOMP_PADDING_SAME;
    else if (p == "valid")
      l->padding_kind = DECOMP_PADDING_VALID;
    else
      return false;
  } else if (!to_pair(*padding, l->padding)) {
    return false;
  }

  /* A non-zeros padding mode pads the input first, by
   * _reversed_padding_repeated_twice = [left, right, top, bottom], and the
   * conv itself pads by nothing. */
  std::string mode = "zeros";
  const torch::jit::Node *pad = conv->input(0)->node();
  std::string pk = pad->kind().toQualString();
  c10::optional<c10::IValue> amounts;
  if (pk == "aten::pad" && pad->inputs().size() >= 3) {
    auto m3 = const_arg(pad->input(2));
    if (!m3 || !m3->isString())
      return false;
    mode = m3->toStringRef();
    if (mode == "constant")
      mode = "zeros";
    amounts = const_arg(pad->input(1));
  } else if (pk == "aten::reflection_pad2d") {
    mode = "reflect";
    amounts = const_arg(pad->input(1));
  } else if (pk == "aten::replication_pad2d") {
    mode = "replicate";
    amounts = const_arg(pad->input(1));
  } else if (pk == "aten::_pad_circular") {
    mode = "circular";
    amounts = const_arg(pad->input(1));
  }
  if (pk == "aten::pad" || pk == "aten::reflection_pad2d" ||
      pk == "aten::replication_pad2d" || pk == "aten::_pad_circular") {
    if (!padding_mode_ok(mode) || !amounts || !amounts->isIntList())
      return false;
    std::vector<int64_t> a = amounts->toIntVector();
    if (a.size() != 4 || l->padding_kind != DECOMP_PADDING_EXPLICIT ||
        l->padding[0] != 0 || l->padding[1] != 0)
      return false;
    if (a[0] == a[1] && a[2] == a[3]) {
      l->padding[0] = a[2];
      l->padding[1] = a[0];
      if (l->stride[0] == 1 && l->stride[1] == 1 &&
          2 * a[2] == l->dilation[0] * (w.size(2) - 1) &&
          2 * a[0] == l->dilation[1] * (w.size(3) - 1))
        model->notes.push_back(
            name +
            ": traced archives do not record padding='same' with "
            "padding_mode='" +
            mode + "'; read as the equal numbers");
    } else {
      /* Only padding='same' pads unevenly (the odd element after). */
      l->padding_kind = DECOMP_PADDING_SAME;
    }
  }
  l->padding_mode = model->keep(mode);
  l->out_channels = w.size(0);
  l->in_channels = w.size(1) * l->groups;
  l->kernel_size[0] = w.size(2);
  l->kernel_size[1] = w.size(3);
  l->source = "graph";
  return true;
}

/* Every module once, in named_modules() order, under its first name. */
void walk_layers(const torch::jit::Module &m, const std::string &name,
                 ts_model *model, std::unordered_set<const void *> &seen) {
  const c10::ClassTypePtr &t = m.type();
  bool own_params = false;
  std::vector<int64_t> key; /* what its parameters are: name, data, shape */
  for (size_t i = 0; i < t->numAttributes(); i++) {
    c10::IValue v = m._ivalue()->getSlot(i);
    if (!t->is_parameter(i) || !v.isTensor())
      continue;
    own_params = true;
    const at::Tensor &p = v.toTensor();
    key.push_back(
        static_cast<int64_t>(std::hash<std::string>()(t->getAttributeName(i))));
    key.push_back(reinterpret_cast<intptr_t>(p.data_ptr()));
    key.push_back(static_cast<int64_t>(p.scalar_type()));
    for (int64_t d : p.sizes())
      key.push_back(d);
    key.push_back(-1);
  }
  /* A module reachable under two names is one object in Python, but
   * TorchScript saves a copy per name sharing the same tensors: the copies
   * are recognised by their parameters and listed once, as named_modules()
   * lists the shared module once. */
  if (own_params && !model->param_sets.insert(key).second)
    own_params = false;
  std::string cls = class_name(t);
  bool plain_param = false;
  if (auto ws = t->findAttributeSlot("weight"))
    plain_param = t->is_parameter(*ws) && m._ivalue()->getSlot(*ws).isTensor();
  bool plain_conv = cls == kTorchConv2d && plain_param;
  if (own_params && name.empty() && !plain_conv) {
    /* The engine names every layer; a root that is not a conv is nothing
     * it could decompose anyway. */
    model->notes.push_back("the root module (" + cls +
                           ") holds parameters of its own; not in the spec");
    own_params = false;
  }
  if (own_params) {
    ts_layer l;
    std::memset(&l, 0, sizeof l);
    /* A bare Conv2d archive: its layer is called "conv" and its tensors
     * "conv.weight"/"conv.bias", the names python/decompd gives the engine
     * for a bare conv (tensor_decompose.ROOT_NAME). */
    model->root_conv = name.empty();
    l.name = model->keep(name.empty() ? std::string(kRootName) : name);
    std::string last = cls.substr(cls.rfind('.') + 1);
    if (plain_conv) {
      l.bias = has_tensor_slot(m, "bias");
      if (conv_from_attributes(m, model, &l) ||
          conv_from_graph(m, name, model, &l)) {
        l.type = "Conv2d";
        l.is_conv = true;
      } else {
        l.type = "Conv2d(structure not recorded)";
        model->notes.push_back(
            name + ": a Conv2d whose fields the archive does not record "
                   "(a traced module never called?); left alone");
      }
    } else if (cls == kTorchLinear && plain_param &&
               linear_from_weight(m, &l)) {
      /* A Linear is its weight's shape and its bias, scripted or traced
       * alike: its forward is F.linear whatever the archive recorded. */
      l.type = "Linear";
      l.is_linear = true;
    } else if (last == "Conv2d") {
      l.type = model->keep(cls == kTorchConv2d
                               ? std::string("Conv2d(weight reparametrized)")
                               : cls.substr(cls.rfind("__torch__.", 0) == 0
                                                ? std::strlen("__torch__.")
                                                : 0));
    } else {
      l.type = model->keep(last);
    }
    model->layers.push_back(l);
  }
  for (size_t i = 0; i < t->numAttributes(); i++) {
    c10::IValue v = m._ivalue()->getSlot(i);
    if (!v.isObject() || !v.toObjectRef().type()->is_module())
      continue;
    torch::jit::Module sub(v.toObject());
    const void *key = sub._ivalue().get();
    if (!seen.insert(key).second)
      continue;
    std::string sub_name = name.empty() ? t->getAttributeName(i)
                                        : name + "." + t->getAttributeName(i);
    walk_layers(sub, sub_name, model, seen);
  }
}

void add_tensor(ts_model *model, const std::string &name, const at::Tensor &t) {
  if (t.is_sparse() || t.is_quantized() || t.is_mkldnn() || !t.has_storage())
    throw Failure{TS_ERR_UNSUPPORTED,
                  name + ": a " + t.toString() +
                      " tensor (only dense, unquantized tensors are read)"};
  ts_tensor info;
  std::memset(&info, 0, sizeof info);
  if (!to_dtype(t.scalar_type(), &info.dtype))
    throw Failure{TS_ERR_UNSUPPORTED,
                  name + ": dtype " +
                      std::string(c10::toString(t.scalar_type())) +
                      " is not supported"};
  if (t.dim() > DECOMP_MAX_DIMS)
    throw Failure{TS_ERR_UNSUPPORTED, name + ": " + std::to_string(t.dim()) +
                                          " dimensions (at most 8)"};
  info.ndim = static_cast<int>(t.dim());
  for (int d = 0; d < info.ndim; d++)
    info.shape[d] = t.size(d);
  info.nbytes = t.numel() * t.element_size();
  info.name = model->keep(name);
  model->infos.push_back(info);
  model->tensors.push_back(t);
}

/* state_dict order: own parameters, own buffers, then each submodule. */
void walk_tensors(const torch::jit::Module &m, const std::string &prefix,
                  ts_model *model, std::unordered_set<const void *> &path) {
  const c10::ClassTypePtr &t = m.type();
  std::string own = prefix.empty() && model->root_conv
                        ? std::string(kRootName) + "."
                        : prefix;
  for (int pass = 0; pass < 2; pass++)
    for (size_t i = 0; i < t->numAttributes(); i++) {
      bool want = pass == 0 ? t->is_parameter(i) : t->is_buffer(i);
      c10::IValue v = m._ivalue()->getSlot(i);
      if (want && v.isTensor())
        add_tensor(model, own + t->getAttributeName(i), v.toTensor());
    }
  for (size_t i = 0; i < t->numAttributes(); i++) {
    c10::IValue v = m._ivalue()->getSlot(i);
    if (!v.isObject() || !v.toObjectRef().type()->is_module())
      continue;
    torch::jit::Module sub(v.toObject());
    const void *key = sub._ivalue().get();
    if (!path.insert(key).second)
      throw Failure{TS_ERR_UNSUPPORTED, prefix + t->getAttributeName(i) +
                                            ": the module graph has a cycle"};
    walk_tensors(sub, prefix + t->getAttributeName(i) + ".", model, path);
    path.erase(key);
  }
}

} // namespace

extern "C" int ts_model_load(const char *path, ts_model **out, char *err,
                             size_t errlen) {
  ts_model *model = nullptr;
  int status = TS_OK;
  try {
    at::set_num_threads(1);
    model = new ts_model();
    try {
      model->module = torch::jit::load(path, c10::Device(c10::kCPU));
    } catch (const c10::Error &e) {
      std::string what = e.what_without_backtrace();
      throw Failure{is_alloc_failure(what) ? TS_ERR_NOMEM : TS_ERR_LOAD,
                    one_line(what)};
    }
    std::unordered_set<const void *> seen{model->module._ivalue().get()};
    walk_layers(model->module, "", model, seen);
    std::unordered_set<const void *> path{model->module._ivalue().get()};
    walk_tensors(model->module, "", model, path);
    *out = model;
    return TS_OK;
  } catch (const Failure &f) {
    status = f.status;
    set_err(err, errlen, f.msg);
  } catch (const std::bad_alloc &) {
    status = TS_ERR_NOMEM;
    set_err(err, errlen, "out of memory");
  } catch (const c10::Error &e) {
    std::string what = e.what_without_backtrace();
    status = is_alloc_failure(what) ? TS_ERR_NOMEM : TS_ERR_LOAD;
    set_err(err, errlen, one_line(what));
  } catch (const std::exception &e) {
    std::string what = e.what();
    status = is_alloc_failure(what) ? TS_ERR_NOMEM : TS_ERR_LOAD;
    set_err(err, errlen, one_line(what));
  } catch (...) {
    status = TS_ERR_INTERNAL;
    set_err(err, errlen, "unknown exception");
  }
  delete model;
  return status;
}

extern "C" size_t ts_model_layer_count(const ts_model *m) {
  return m->layers.size();
}

extern "C" const ts_layer *ts_model_layer(const ts_model *m, size_t i) {
  return i < m->layers.size() ? &m->layers[i] : nullptr;
}

extern "C" size_t ts_model_tensor_count(const ts_model *m) {
  return m->infos.size();
}

extern "C" const ts_tensor *ts_model_tensor(const ts_model *m, size_t i) {
  return i < m->infos.size() ? &m->infos[i] : nullptr;
}

extern "C" int ts_model_tensor_data(ts_model *m, size_t i, const void **data,
                                    char *err, size_t errlen) {
  if (i >= m->tensors.size())
    return TS_ERR_INTERNAL;
  try {
    m->scratch = at::Tensor();
    const at::Tensor &t = m->tensors[i];
    if (t.is_contiguous()) {
      *data = t.data_ptr();
    } else {
      m->scratch = t.contiguous();
      *data = m->scratch.data_ptr();
    }
    if (!*data && m->infos[i].nbytes)
      return TS_ERR_INTERNAL;
    return TS_OK;
  } catch (const std::bad_alloc &) {
    set_err(err, errlen, std::string(m->infos[i].name) + ": out of memory");
    return TS_ERR_NOMEM;
  } catch (const std::exception &e) {
    std::string what = e.what();
    set_err(err, errlen, std::string(m->infos[i].name) + ": " + one_line(what));
    return is_alloc_failure(what) ? TS_ERR_NOMEM : TS_ERR_INTERNAL;
  }
}

extern "C" size_t ts_model_note_count(const ts_model *m) {
  return m->notes.size();
}

extern "C" const char *ts_model_note(const ts_model *m, size_t i) {
  return i < m->notes.size() ? m->notes[i].c_str() : nullptr;
}

extern "C" void ts_model_free(ts_model *m) {
  delete m;
}
