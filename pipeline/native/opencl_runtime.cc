// Our OpenCL device runtime for TVM 0.27: libtvm_runtime_opencl.so.
//
// The pip TVM runtime has no OpenCL support, so a library built for a Mali or Adreno GPU cannot run on the
// board. `import tvm` loads a library of this name when it finds one (beside libtvm_runtime.so, the tvm_ffi
// folders, LD_LIBRARY_PATH or PATH; or ctypes.CDLL after `import tvm`); its static initialisers register:
//   device_api.opencl                     the DeviceAPI: device memory as OpenCL buffers, copies, queues
//   ffi.Module.load_from_bytes.opencl     the loader of the OpenCL module inside a compiled library
//   xception_edge.opencl.stats            what ran: device name, kernels built, launches (the proof it ran)
//
// The module blob, as TVM 0.27 writes it (little-endian; a string is a u64 length and its bytes):
//   string "cl"; u64 n; n x { string key; string name; u64 k, k x DLDataType (u8 code, u8 bits, u16 lanes);
//   u64 t, t x string launch tag; u64 e, e x i32 extra tag }; string source.
// The source holds one chunk per kernel, each starting with `// Function: <name>` and declaring every kernel;
// each chunk is built as its own program, when the kernel is first called. A kernel is called with its own
// arguments (buffers as cl_mem handles, scalars), then one int64 per launch tag: blockIdx.* are work-group
// counts, threadIdx.* the work-group size.
//
// Written for this project from the facts above and the OpenCL 1.2 API; no code from TVM's own runtime.

#define CL_TARGET_OPENCL_VERSION 120
#include <CL/cl.h>

#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/ffi/string.h>
#include <tvm/runtime/device_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace xception_edge {
namespace {

using tvm::ffi::Any;
using tvm::ffi::Bytes;
using tvm::ffi::Function;
using tvm::ffi::Module;
using tvm::ffi::ModuleObj;
using tvm::ffi::Optional;
using tvm::ffi::PackedArgs;
using tvm::ffi::String;

#define XC_CL_CHECK(call)                                                                       \
  do {                                                                                          \
    cl_int err_ = (call);                                                                       \
    if (err_ != CL_SUCCESS) TVM_FFI_THROW(RuntimeError) << "OpenCL: " #call " failed: " << err_; \
  } while (0)

// -- the devices and their memory ------------------------------------------------------------------------
class Workspace final : public tvm::runtime::DeviceAPI {
 public:
  static Workspace* Global() {
    static Workspace* instance = new Workspace();  // never destroyed: TVM may free buffers at exit
    return instance;
  }

  void Init() {
    std::lock_guard<std::mutex> lock(mu_);
    if (initialised_) return;
    initialised_ = true;
    cl_uint n_platforms = 0;
    if (clGetPlatformIDs(0, nullptr, &n_platforms) != CL_SUCCESS || n_platforms == 0) return;
    std::vector<cl_platform_id> platforms(n_platforms);
    XC_CL_CHECK(clGetPlatformIDs(n_platforms, platforms.data(), nullptr));
    // XC_OPENCL_PLATFORM picks a platform by a part of its name (e.g. "Portable", "Intel"); otherwise the
    // first platform with a GPU, else the first with any device (a CPU OpenCL, as in `make verify`).
    const char* wanted = std::getenv("XC_OPENCL_PLATFORM");
    for (cl_device_type type : {cl_device_type{CL_DEVICE_TYPE_GPU}, cl_device_type{CL_DEVICE_TYPE_ALL}}) {
      for (cl_platform_id p : platforms) {
        if (wanted != nullptr && PlatformName(p).find(wanted) == std::string::npos) continue;
        cl_uint n = 0;
        if (clGetDeviceIDs(p, type, 0, nullptr, &n) != CL_SUCCESS || n == 0) continue;
        devices_.resize(n);
        XC_CL_CHECK(clGetDeviceIDs(p, type, n, devices_.data(), nullptr));
        platform_ = p;
        cl_int err = CL_SUCCESS;
        context_ = clCreateContext(nullptr, n, devices_.data(), nullptr, nullptr, &err);
        if (err != CL_SUCCESS) TVM_FFI_THROW(RuntimeError) << "OpenCL: clCreateContext failed: " << err;
        for (cl_device_id d : devices_) {
          queues_.push_back(clCreateCommandQueue(context_, d, 0, &err));
          if (err != CL_SUCCESS) TVM_FFI_THROW(RuntimeError) << "OpenCL: clCreateCommandQueue failed: " << err;
        }
        return;
      }
    }
  }

  bool Exists(int id) {
    Init();
    return id >= 0 && id < static_cast<int>(devices_.size());
  }

  cl_device_id Device(int id) {
    if (!Exists(id)) {
      TVM_FFI_THROW(RuntimeError) << "OpenCL device " << id << " does not exist (" << devices_.size()
                                  << " found; is an OpenCL driver (ICD) installed?)";
    }
    return devices_[id];
  }
  cl_context Context() { return context_; }
  cl_command_queue Queue(int id) {
    Device(id);
    return queues_[id];
  }
  std::string DeviceName(int id) { return Info(Device(id), CL_DEVICE_NAME); }
  std::string DeviceType(int id) {
    cl_device_type type = 0;
    XC_CL_CHECK(clGetDeviceInfo(Device(id), CL_DEVICE_TYPE, sizeof(type), &type, nullptr));
    return (type & CL_DEVICE_TYPE_GPU) ? "gpu" : (type & CL_DEVICE_TYPE_CPU) ? "cpu" : "other";
  }
  std::string Platform() { return platform_ ? PlatformName(platform_) : ""; }

  void SetDevice(DLDevice dev) final { current_device_ = dev.device_id; }
  int CurrentDevice() const { return current_device_; }

  void GetAttr(DLDevice dev, tvm::runtime::DeviceAttrKind kind, Any* rv) final {
    using namespace tvm::runtime;
    if (kind == kExist) {
      *rv = static_cast<int>(Exists(dev.device_id));
      return;
    }
    cl_device_id d = Device(dev.device_id);
    switch (kind) {
      case kMaxThreadsPerBlock: {
        size_t v = 0;
        XC_CL_CHECK(clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof(v), &v, nullptr));
        *rv = static_cast<int64_t>(v);
        break;
      }
      case kWarpSize:
        *rv = 1;
        break;
      case kMaxSharedMemoryPerBlock: {
        cl_ulong v = 0;
        XC_CL_CHECK(clGetDeviceInfo(d, CL_DEVICE_LOCAL_MEM_SIZE, sizeof(v), &v, nullptr));
        *rv = static_cast<int64_t>(v);
        break;
      }
      case kDeviceName:
        *rv = String(Info(d, CL_DEVICE_NAME));
        break;
      case kDriverVersion:
        *rv = String(Info(d, CL_DRIVER_VERSION));
        break;
      case kApiVersion:
        *rv = 120;
        break;
      case kMultiProcessorCount: {
        cl_uint v = 0;
        XC_CL_CHECK(clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof(v), &v, nullptr));
        *rv = static_cast<int64_t>(v);
        break;
      }
      case kTotalGlobalMemory: {
        cl_ulong v = 0;
        XC_CL_CHECK(clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof(v), &v, nullptr));
        *rv = static_cast<int64_t>(v);
        break;
      }
      default:
        break;  // unknown here: left unset, as TVM expects
    }
  }

  void* AllocDataSpace(DLDevice dev, size_t nbytes, size_t alignment, DLDataType type_hint) final {
    Device(dev.device_id);
    cl_int err = CL_SUCCESS;
    cl_mem mem = clCreateBuffer(context_, CL_MEM_READ_WRITE, nbytes ? nbytes : 1, nullptr, &err);
    if (err != CL_SUCCESS) {
      TVM_FFI_THROW(RuntimeError) << "OpenCL: cannot allocate " << nbytes << " bytes on "
                                  << DeviceName(dev.device_id) << " (error " << err << ")";
    }
    return mem;
  }

  void* AllocDataSpace(DLDevice dev, int ndim, const int64_t* shape, DLDataType dtype,
                       Optional<String> mem_scope) final {
    if (mem_scope.has_value() && mem_scope.value() != "global" && !mem_scope.value().empty()) {
      TVM_FFI_THROW(RuntimeError) << "OpenCL: memory scope '" << mem_scope.value()
                                  << "' (image / texture memory) is not supported by this runtime";
    }
    size_t n = 1;
    for (int i = 0; i < ndim; ++i) n *= static_cast<size_t>(shape[i]);
    return AllocDataSpace(dev, n * ((dtype.bits * dtype.lanes + 7) / 8), tvm::runtime::kAllocAlignment, dtype);
  }

  void FreeDataSpace(DLDevice dev, void* ptr) final {
    if (ptr != nullptr) clReleaseMemObject(static_cast<cl_mem>(ptr));
  }

  void StreamSync(DLDevice dev, TVMStreamHandle stream) final { XC_CL_CHECK(clFinish(Queue(dev.device_id))); }

 protected:
  void CopyDataFromTo(const void* from, size_t from_offset, void* to, size_t to_offset, size_t size,
                      DLDevice dev_from, DLDevice dev_to, DLDataType type_hint, TVMStreamHandle stream) final {
    if (size == 0) return;
    const bool from_cl = dev_from.device_type == kDLOpenCL, to_cl = dev_to.device_type == kDLOpenCL;
    if (from_cl && to_cl) {
      cl_command_queue q = Queue(dev_from.device_id);
      XC_CL_CHECK(clEnqueueCopyBuffer(q, static_cast<cl_mem>(const_cast<void*>(from)), static_cast<cl_mem>(to),
                                      from_offset, to_offset, size, 0, nullptr, nullptr));
      XC_CL_CHECK(clFinish(q));
    } else if (from_cl) {
      XC_CL_CHECK(clEnqueueReadBuffer(Queue(dev_from.device_id), static_cast<cl_mem>(const_cast<void*>(from)),
                                      CL_TRUE, from_offset, size, static_cast<char*>(to) + to_offset, 0, nullptr,
                                      nullptr));
    } else if (to_cl) {
      XC_CL_CHECK(clEnqueueWriteBuffer(Queue(dev_to.device_id), static_cast<cl_mem>(to), CL_TRUE, to_offset, size,
                                       static_cast<const char*>(from) + from_offset, 0, nullptr, nullptr));
    } else {
      std::memcpy(static_cast<char*>(to) + to_offset, static_cast<const char*>(from) + from_offset, size);
    }
  }

 private:
  static std::string Info(cl_device_id d, cl_device_info what) {
    size_t n = 0;
    XC_CL_CHECK(clGetDeviceInfo(d, what, 0, nullptr, &n));
    std::string s(n, '\0');
    XC_CL_CHECK(clGetDeviceInfo(d, what, n, s.data(), nullptr));
    while (!s.empty() && s.back() == '\0') s.pop_back();
    return s;
  }
  static std::string PlatformName(cl_platform_id p) {
    size_t n = 0;
    if (clGetPlatformInfo(p, CL_PLATFORM_NAME, 0, nullptr, &n) != CL_SUCCESS) return "";
    std::string s(n, '\0');
    clGetPlatformInfo(p, CL_PLATFORM_NAME, n, s.data(), nullptr);
    while (!s.empty() && s.back() == '\0') s.pop_back();
    return s;
  }

  std::mutex mu_;
  bool initialised_ = false;
  cl_platform_id platform_ = nullptr;
  cl_context context_ = nullptr;
  std::vector<cl_device_id> devices_;
  std::vector<cl_command_queue> queues_;
  static thread_local int current_device_;
};
thread_local int Workspace::current_device_ = 0;

// -- counters for the proof that kernels ran on OpenCL ------------------------------------------------------
struct Stats {
  std::mutex mu;
  int64_t kernels_built = 0;
  int64_t launches = 0;
};
Stats& GlobalStats() {
  static Stats* stats = new Stats();
  return *stats;
}

// -- the module blob -----------------------------------------------------------------------------------------
struct KernelInfo {
  std::string name;
  std::vector<DLDataType> arg_types;
  std::vector<std::string> launch_tags;
};

class Reader {
 public:
  explicit Reader(const std::string& data) : data_(data) {}
  uint64_t U64() { return Take<uint64_t>(); }
  std::string Str() {
    uint64_t n = U64();
    Need(n);
    std::string s = data_.substr(pos_, n);
    pos_ += n;
    return s;
  }
  template <typename T>
  T Take() {
    Need(sizeof(T));
    T v;
    std::memcpy(&v, data_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }

 private:
  void Need(uint64_t n) {
    if (n > data_.size() - pos_) TVM_FFI_THROW(ValueError) << "OpenCL module blob is truncated at byte " << pos_;
  }
  const std::string& data_;
  size_t pos_ = 0;
};

// -- the module ------------------------------------------------------------------------------------------
class OpenCLModule final : public ModuleObj {
 public:
  OpenCLModule(std::string blob, std::map<std::string, KernelInfo> kernels, std::string source)
      : blob_(std::move(blob)), kernels_(std::move(kernels)), source_(std::move(source)) {
    // one program per `// Function: <name>` chunk
    const std::string marker = "// Function: ";
    size_t start = source_.find(marker);
    while (start != std::string::npos) {
      size_t name_end = source_.find('\n', start);
      std::string name = source_.substr(start + marker.size(), name_end - start - marker.size());
      size_t next = source_.find("\n" + marker, name_end);
      chunks_[name] = source_.substr(start, next == std::string::npos ? std::string::npos : next + 1 - start);
      start = next == std::string::npos ? next : next + 1;
    }
  }

  ~OpenCLModule() {
    for (auto& entry : built_) {
      clReleaseKernel(entry.second.first);
      clReleaseProgram(entry.second.second);
    }
  }

  const char* kind() const final { return "opencl"; }
  int GetPropertyMask() const final { return Module::kBinarySerializable | Module::kRunnable; }
  Bytes SaveToBytes() const final { return Bytes(blob_); }
  String InspectSource(const String& format) const final { return String(source_); }

  Optional<Function> GetFunction(const String& name) final {
    auto it = kernels_.find(std::string(name));
    if (it == kernels_.end()) return std::nullopt;
    const KernelInfo* info = &it->second;
    // the module outlives its functions: TVM keeps imported modules alive with the library
    OpenCLModule* self = this;
    return Function::FromPacked([self, info](PackedArgs args, Any* rv) { self->Launch(*info, args); });
  }

 private:
  cl_kernel Kernel(const KernelInfo& info, int device_id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto key = std::make_pair(info.name, device_id);
    auto found = built_.find(key);
    if (found != built_.end()) return found->second.first;
    Workspace* ws = Workspace::Global();
    cl_device_id device = ws->Device(device_id);
    auto chunk = chunks_.find(info.name);
    if (chunk == chunks_.end()) TVM_FFI_THROW(RuntimeError) << "OpenCL source has no chunk for " << info.name;
    const char* text = chunk->second.c_str();
    size_t length = chunk->second.size();
    cl_int err = CL_SUCCESS;
    cl_program program = clCreateProgramWithSource(ws->Context(), 1, &text, &length, &err);
    if (err != CL_SUCCESS) TVM_FFI_THROW(RuntimeError) << "OpenCL: clCreateProgramWithSource failed: " << err;
    err = clBuildProgram(program, 1, &device, nullptr, nullptr, nullptr);
    if (err != CL_SUCCESS) {
      size_t n = 0;
      clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, 0, nullptr, &n);
      std::string log(n, '\0');
      clGetProgramBuildInfo(program, device, CL_PROGRAM_BUILD_LOG, n, log.data(), nullptr);
      clReleaseProgram(program);
      TVM_FFI_THROW(RuntimeError) << "OpenCL: building kernel " << info.name << " failed (" << err << "): " << log;
    }
    cl_kernel kernel = clCreateKernel(program, info.name.c_str(), &err);
    if (err != CL_SUCCESS) TVM_FFI_THROW(RuntimeError) << "OpenCL: clCreateKernel(" << info.name << ") failed: " << err;
    built_[key] = {kernel, program};
    std::lock_guard<std::mutex> stats_lock(GlobalStats().mu);
    GlobalStats().kernels_built += 1;
    return kernel;
  }

  void Launch(const KernelInfo& info, PackedArgs args) {
    Workspace* ws = Workspace::Global();
    int device_id = ws->CurrentDevice();
    cl_kernel kernel = Kernel(info, device_id);
    const size_t n_args = info.arg_types.size();
    if (static_cast<size_t>(args.size()) != n_args + info.launch_tags.size()) {
      TVM_FFI_THROW(ValueError) << info.name << ": expected " << n_args + info.launch_tags.size()
                                << " arguments, got " << args.size();
    }
    std::lock_guard<std::mutex> lock(mu_);  // clSetKernelArg on a shared kernel object
    for (size_t i = 0; i < n_args; ++i) {
      const DLDataType t = info.arg_types[i];
      cl_int err = CL_SUCCESS;
      if (t.code == kDLOpaqueHandle) {
        cl_mem mem = static_cast<cl_mem>(args[i].cast<void*>());
        err = clSetKernelArg(kernel, i, sizeof(cl_mem), &mem);
      } else if (t.code == kDLInt || t.code == kDLUInt) {
        int64_t v = args[i].cast<int64_t>();
        if (t.bits == 64) {
          err = clSetKernelArg(kernel, i, sizeof(int64_t), &v);
        } else if (t.bits == 32) {
          int32_t v32 = static_cast<int32_t>(v);
          err = clSetKernelArg(kernel, i, sizeof(int32_t), &v32);
        } else {
          TVM_FFI_THROW(TypeError) << info.name << ": argument " << i << " is a " << int(t.bits) << "-bit integer";
        }
      } else if (t.code == kDLFloat && t.bits == 32) {
        float v = static_cast<float>(args[i].cast<double>());
        err = clSetKernelArg(kernel, i, sizeof(float), &v);
      } else {
        TVM_FFI_THROW(TypeError) << info.name << ": unsupported argument type (code " << int(t.code) << ", "
                                 << int(t.bits) << " bits)";
      }
      if (err != CL_SUCCESS) TVM_FFI_THROW(RuntimeError) << "OpenCL: clSetKernelArg(" << info.name << ", " << i
                                                         << ") failed: " << err;
    }
    size_t groups[3] = {1, 1, 1}, local[3] = {1, 1, 1};
    cl_uint dims = 1;
    for (size_t j = 0; j < info.launch_tags.size(); ++j) {
      const std::string& tag = info.launch_tags[j];
      int64_t value = args[n_args + j].cast<int64_t>();
      size_t* slot = nullptr;
      if (tag.rfind("blockIdx.", 0) == 0) slot = groups;
      if (tag.rfind("threadIdx.", 0) == 0) slot = local;
      if (slot == nullptr || tag.size() != (slot == groups ? 10 : 11) || tag.back() < 'x' || tag.back() > 'z') {
        TVM_FFI_THROW(RuntimeError) << info.name << ": launch parameter '" << tag << "' is not supported";
      }
      int axis = tag.back() - 'x';
      slot[axis] = static_cast<size_t>(value);
      dims = std::max<cl_uint>(dims, axis + 1);
    }
    size_t global[3];
    for (int k = 0; k < 3; ++k) global[k] = groups[k] * local[k];
    XC_CL_CHECK(clEnqueueNDRangeKernel(ws->Queue(device_id), kernel, dims, nullptr, global, local, 0, nullptr,
                                       nullptr));
    std::lock_guard<std::mutex> stats_lock(GlobalStats().mu);
    GlobalStats().launches += 1;
  }

  std::string blob_;
  std::map<std::string, KernelInfo> kernels_;
  std::string source_;
  std::map<std::string, std::string> chunks_;
  std::mutex mu_;
  std::map<std::pair<std::string, int>, std::pair<cl_kernel, cl_program>> built_;
};

Module LoadFromBytes(const Bytes& bytes) {
  std::string blob(bytes.data(), bytes.size());
  Reader r(blob);
  std::string fmt = r.Str();
  if (fmt != "cl") TVM_FFI_THROW(ValueError) << "OpenCL module format '" << fmt << "' is not supported (only cl)";
  std::map<std::string, KernelInfo> kernels;
  uint64_t n = r.U64();
  for (uint64_t i = 0; i < n; ++i) {
    std::string key = r.Str();
    KernelInfo info;
    info.name = r.Str();
    uint64_t k = r.U64();
    for (uint64_t a = 0; a < k; ++a) {
      DLDataType t;
      t.code = r.Take<uint8_t>();
      t.bits = r.Take<uint8_t>();
      t.lanes = r.Take<uint16_t>();
      info.arg_types.push_back(t);
    }
    uint64_t tags = r.U64();
    for (uint64_t a = 0; a < tags; ++a) info.launch_tags.push_back(r.Str());
    uint64_t extra = r.U64();
    for (uint64_t a = 0; a < extra; ++a) {
      if (r.Take<int32_t>() != 0) {
        TVM_FFI_THROW(ValueError) << "kernel " << info.name << " has an argument tag this runtime does not support";
      }
    }
    kernels[key] = std::move(info);
  }
  std::string source = r.Str();
  return Module(tvm::ffi::make_object<OpenCLModule>(std::move(blob), std::move(kernels), std::move(source)));
}

}  // namespace
}  // namespace xception_edge

TVM_FFI_STATIC_INIT_BLOCK() {
  namespace refl = tvm::ffi::reflection;
  using namespace xception_edge;
  refl::GlobalDef()
      .def_packed("device_api.opencl",
                  [](tvm::ffi::PackedArgs, tvm::ffi::Any* rv) {
                    *rv = static_cast<void*>(static_cast<tvm::runtime::DeviceAPI*>(Workspace::Global()));
                  })
      .def("ffi.Module.load_from_bytes.opencl", LoadFromBytes)
      .def("xception_edge.opencl.stats", []() {
        Workspace* ws = Workspace::Global();
        std::ostringstream out;
        std::lock_guard<std::mutex> lock(GlobalStats().mu);
        out << "{\"platform\": \"" << (ws->Exists(0) ? ws->Platform() : "") << "\", \"device\": \""
            << (ws->Exists(0) ? ws->DeviceName(0) : "") << "\", \"device_type\": \""
            << (ws->Exists(0) ? ws->DeviceType(0) : "") << "\", \"kernels_built\": " << GlobalStats().kernels_built
            << ", \"launches\": " << GlobalStats().launches << "}";
        return tvm::ffi::String(out.str());
      });
}
