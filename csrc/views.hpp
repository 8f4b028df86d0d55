// Tensors handed over as DLPack capsules (torch.utils.dlpack.to_dlpack): the DLPack ABI, and the
// bytes of a C-contiguous CPU tensor, so bindings can take a tensor where they take a uint8 array.
#pragma once

#include <Python.h>

#include "arrays.hpp"

namespace mw {

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
inline constexpr int32_t kDLCPU = 1;
inline constexpr const char* kName = "dltensor";
inline constexpr const char* kUsedName = "used_dltensor";
inline constexpr const char* kOwnerName = "multiwrite.dltensor_owner";

// Bytes of a C-contiguous tensor, or -1 when it is not C-contiguous. Sizes are checked for overflow.
inline int64_t contiguous_nbytes(const DLTensor& t) {
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

// The managed tensor of an unconsumed DLPack capsule (not consumed here: the capsule's owner keeps the
// tensor alive), or nullptr when ``obj`` is not one.
inline DLManagedTensor* capsule_managed(py::handle obj) {
    if (!PyCapsule_CheckExact(obj.ptr()) || !PyCapsule_IsValid(obj.ptr(), kName)) return nullptr;
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(obj.ptr(), kName));
    if (managed == nullptr) throw py::error_already_set();
    return managed;
}

struct ByteBuffer {
    uint8_t* data;
    uint64_t size;
};

// The memory of a C-contiguous tensor in CPU memory; false (the caller says what is wrong) for a
// tensor elsewhere or not C-contiguous, ValueError for a malformed description.
inline bool cpu_bytes(const DLTensor& t, ByteBuffer* out) {
    if (t.device.device_type != kDLCPU) return false;
    const int64_t n = contiguous_nbytes(t);
    if (n < 0) return false;
    if (n > 0 && t.data == nullptr) value_error("dlpack tensor of ", n, " bytes without data");
    *out = {static_cast<uint8_t*>(t.data) + (n > 0 ? t.byte_offset : 0), static_cast<uint64_t>(n)};
    return true;
}

// Bytes of a byte buffer argument: a uint8 C-contiguous NumPy array (writeable if asked), or an
// unconsumed DLPack capsule of a C-contiguous CPU tensor (any element type). ValueError otherwise.
inline ByteBuffer buffer_arg(py::handle obj, const char* name, bool writeable) {
    ByteBuffer b;
    if (const DLManagedTensor* managed = capsule_managed(obj)) {
        if (!cpu_bytes(managed->dl_tensor, &b))
            value_error(name, managed->dl_tensor.device.device_type != kDLCPU ? ": the tensor is not in CPU memory"
                                                                              : ": the tensor is not C-contiguous");
        return b;
    }
    py::array a = py::array::ensure(obj);
    if (!a) value_error(name, " must be a uint8 NumPy array or a DLPack capsule of a CPU tensor");
    require(a, name, DT::U8, -1, writeable);
    return {static_cast<uint8_t*>(const_cast<void*>(a.data())), nbytes(a)};
}

}  // namespace mw
