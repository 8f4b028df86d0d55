// Byte views of tensors handed over as DLPack capsules (torch.utils.dlpack.to_dlpack): a uint8 NumPy
// array over the tensor's own memory, without a copy (cheaper than torch's .view(torch.uint8).numpy()
// chain, which costs a rank 25-45 us per tensor when its caches are cold, and on a host with more
// ranks than cores the other ranks of a small collective wait for that); and what a collective
// checks of its pair of tensors.
#include <Python.h>

#include "views.hpp"

namespace mw {
namespace {

// Destructor of the capsule that owns a consumed tensor (the base object of the returned array).
void release_owner(PyObject* owner) {
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(owner, kOwnerName));
    if (managed == nullptr) {
        PyErr_Clear();
        return;
    }
    if (managed->deleter != nullptr) managed->deleter(managed);
}

py::object py_dlpack_bytes(py::object capsule) {
    DLManagedTensor* managed = capsule_managed(capsule);
    if (managed == nullptr)
        value_error("expected an unconsumed DLPack capsule named 'dltensor' (torch.utils.dlpack.to_dlpack)");
    ByteBuffer bytes;
    if (!cpu_bytes(managed->dl_tensor, &bytes)) return py::none();     // the caller says what is wrong
    PyObject* cap = capsule.ptr();
    // Consume it (DLPack protocol): the producer's capsule no longer frees the tensor; our owner
    // capsule, the array's base, calls the deleter when the array goes away.
    py::object owner = py::reinterpret_steal<py::object>(PyCapsule_New(managed, kOwnerName, release_owner));
    if (!owner) throw py::error_already_set();
    if (PyCapsule_SetName(cap, kUsedName) != 0) {
        PyCapsule_SetDestructor(owner.ptr(), nullptr);   // still the producer's: do not free it twice
        throw py::error_already_set();
    }
    return py::array(py::dtype("uint8"), {static_cast<py::ssize_t>(bytes.size)}, {py::ssize_t(1)}, bytes.data, owner);
}

// (dtype key, nbytes) of a capsule's tensor if C-contiguous in CPU memory.
bool tensor_key(py::handle obj, int64_t* key, int64_t* n) {
    const DLManagedTensor* managed = capsule_managed(obj);
    if (managed == nullptr)
        value_error("expected unconsumed DLPack capsules named 'dltensor' (torch.utils.dlpack.to_dlpack)");
    const DLTensor& t = managed->dl_tensor;
    ByteBuffer bytes;
    if (!cpu_bytes(t, &bytes)) return false;
    *n = static_cast<int64_t>(bytes.size);
    *key = int64_t(t.dtype.code) | int64_t(t.dtype.bits) << 8 | int64_t(t.dtype.lanes) << 16;
    return true;
}

py::object py_dlpack_pair(py::handle a, py::handle b) {
    int64_t ka, na, kb, nb;
    const bool ok_a = tensor_key(a, &ka, &na), ok_b = tensor_key(b, &kb, &nb);
    if (!ok_a || !ok_b) return py::none();
    return py::make_tuple(ka, na, kb, nb);
}

}  // namespace

void register_views(py::module_& m) {
    m.def("dlpack_pair", &py_dlpack_pair, py::arg("a"), py::arg("b"),
          R"(dlpack_pair(a, b) -> (a_dtype, a_nbytes, b_dtype, b_nbytes) | None

What a collective checks of its input and output tensors, given as unconsumed DLPack capsules
(torch.utils.dlpack.to_dlpack; not consumed here): each one's element type as an int (DLPack
code | bits << 8 | lanes << 16) and its bytes; None unless both are C-contiguous in CPU memory.
Such a capsule can then be passed where the round functions take a uint8 array (round_put's src,
round_collect's out) while it is alive. ValueError for anything but unconsumed DLPack capsules.)");
    m.def("dlpack_bytes", &py_dlpack_bytes, py::arg("capsule"),
          R"(dlpack_bytes(capsule) -> numpy.ndarray | None

A writeable uint8 [nbytes] NumPy view of the memory of a DLPack tensor (a 'dltensor' capsule from
torch.utils.dlpack.to_dlpack; any element type, bfloat16 included), without a copy. The capsule is
consumed and the array keeps the tensor alive. None, with the capsule left unconsumed, when the
tensor is not C-contiguous or not in CPU memory. ValueError for anything but an unconsumed DLPack
capsule, or a malformed tensor description.)");
}

}  // namespace mw
