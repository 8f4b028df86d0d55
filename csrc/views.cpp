// Byte views of tensors handed over as DLPack capsules (torch.utils.dlpack.to_dlpack): a uint8 NumPy
// array over the tensor's own memory, without a copy. Cheaper than torch's
// .view(torch.uint8).numpy() chain, which costs a rank 25-45 us per tensor when its caches are cold
// (and on a host with more ranks than cores, the other ranks of a small collective wait for that).
#include <Python.h>

#include "arrays.hpp"

namespace mw {
namespace {

// The DLPack ABI (dlpack.h, v0.x "dltensor" capsules: the layout every producer still exports).
struct DLDevice {
    int32_t device_type;
    int32_t device_id;
};
struct DLDataType {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
};
struct DLTensor {
    void* data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t* shape;
    int64_t* strides;
    uint64_t byte_offset;
};
struct DLManagedTensor {
    DLTensor dl_tensor;
    void* manager_ctx;
    void (*deleter)(DLManagedTensor*);
};
constexpr int32_t kDLCPU = 1;
constexpr const char* kName = "dltensor";
constexpr const char* kUsedName = "used_dltensor";
constexpr const char* kOwnerName = "multiwrite.dltensor_owner";

// Destructor of the capsule that owns a consumed tensor (the base object of the returned array).
void release_owner(PyObject* owner) {
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(owner, kOwnerName));
    if (managed == nullptr) {
        PyErr_Clear();
        return;
    }
    if (managed->deleter != nullptr) managed->deleter(managed);
}

// Bytes of a C-contiguous tensor, or -1 when it is not C-contiguous. Sizes are checked for overflow.
int64_t contiguous_nbytes(const DLTensor& t) {
    if (t.ndim < 0 || t.ndim > 64) value_error("dlpack tensor with ", t.ndim, " dimensions");
    if (t.dtype.bits == 0 || t.dtype.bits % 8 != 0 || t.dtype.lanes == 0)
        value_error("dlpack tensor with an element of ", int(t.dtype.bits), " bits x ", int(t.dtype.lanes), " lanes");
    if (t.ndim > 0 && t.shape == nullptr) value_error("dlpack tensor without a shape");
    uint64_t numel = 1;
    for (int32_t i = 0; i < t.ndim; ++i) {
        if (t.shape[i] < 0) value_error("dlpack tensor with a negative dimension ", t.shape[i]);
        if (t.shape[i] != 0 && numel > (uint64_t(1) << 62) / static_cast<uint64_t>(t.shape[i]))
            value_error("dlpack tensor too large");
        numel *= static_cast<uint64_t>(t.shape[i]);
    }
    if (t.strides != nullptr && numel > 0) {
        int64_t expect = 1;    // in elements; dimensions of size 1 may have any stride
        for (int32_t i = t.ndim - 1; i >= 0; --i) {
            if (t.shape[i] != 1 && t.strides[i] != expect) return -1;
            expect *= t.shape[i];
        }
    }
    const uint64_t item = uint64_t(t.dtype.bits / 8) * t.dtype.lanes;
    if (numel > (uint64_t(1) << 62) / item) value_error("dlpack tensor too large");
    return static_cast<int64_t>(numel * item);
}

py::object py_dlpack_bytes(py::object capsule) {
    PyObject* cap = capsule.ptr();
    if (!PyCapsule_IsValid(cap, kName))
        value_error("expected an unconsumed DLPack capsule named 'dltensor' (torch.utils.dlpack.to_dlpack)");
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, kName));
    if (managed == nullptr) throw py::error_already_set();
    const DLTensor& t = managed->dl_tensor;
    if (t.device.device_type != kDLCPU) return py::none();     // the caller says what is wrong
    const int64_t n = contiguous_nbytes(t);
    if (n < 0) return py::none();
    if (n > 0 && t.data == nullptr) value_error("dlpack tensor of ", n, " bytes without data");
    // Consume it (DLPack protocol): the producer's capsule no longer frees the tensor; our owner
    // capsule, the array's base, calls the deleter when the array goes away.
    py::object owner = py::reinterpret_steal<py::object>(PyCapsule_New(managed, kOwnerName, release_owner));
    if (!owner) throw py::error_already_set();
    if (PyCapsule_SetName(cap, kUsedName) != 0) {
        PyCapsule_SetDestructor(owner.ptr(), nullptr);   // still the producer's: do not free it twice
        throw py::error_already_set();
    }
    auto* data = static_cast<uint8_t*>(t.data) + (n > 0 ? t.byte_offset : 0);
    return py::array(py::dtype("uint8"), {static_cast<py::ssize_t>(n)}, {py::ssize_t(1)}, data, owner);
}

}  // namespace

void register_views(py::module_& m) {
    m.def("dlpack_bytes", &py_dlpack_bytes, py::arg("capsule"),
          R"(dlpack_bytes(capsule) -> numpy.ndarray | None

A writeable uint8 [nbytes] NumPy view of the memory of a DLPack tensor (a 'dltensor' capsule from
torch.utils.dlpack.to_dlpack; any element type, bfloat16 included), without a copy. The capsule is
consumed and the array keeps the tensor alive. None, with the capsule left unconsumed, when the
tensor is not C-contiguous or not in CPU memory. ValueError for anything but an unconsumed DLPack
capsule, or a malformed tensor description.)");
}

}  // namespace mw
