// Argument checking for the bindings: NumPy dtypes, shapes, contiguity, writeability and Python
// integers, each failing with a ValueError that names the argument. Call these with the GIL held,
// before any bulk data is touched.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common.hpp"

namespace mw {
namespace py = pybind11;

enum class DT { U8, I32, I64, U64, F32, F16, U16, Bool };

inline const char* dt_name(DT d) {
    switch (d) {
        case DT::U8: return "uint8";
        case DT::I32: return "int32";
        case DT::I64: return "int64";
        case DT::U64: return "uint64";
        case DT::F32: return "float32";
        case DT::F16: return "float16";
        case DT::U16: return "uint16";
        case DT::Bool: return "bool";
    }
    return "?";
}

inline bool is_dt(const py::array& a, DT d) {
    py::dtype t = a.dtype();
    char bo = t.byteorder();
    if (bo == '>') return false;  // native little-endian or not applicable only
    char kind = t.kind();
    auto size = t.itemsize();
    switch (d) {
        case DT::U8: return kind == 'u' && size == 1;
        case DT::I32: return kind == 'i' && size == 4;
        case DT::I64: return kind == 'i' && size == 8;
        case DT::U64: return kind == 'u' && size == 8;
        case DT::F32: return kind == 'f' && size == 4;
        case DT::F16: return kind == 'f' && size == 2;
        case DT::U16: return kind == 'u' && size == 2;
        case DT::Bool: return kind == 'b' && size == 1;
    }
    return false;
}

inline std::string dtype_str(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

inline std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) {
        if (i) s += ", ";
        s += std::to_string(a.shape(i));
    }
    if (a.ndim() == 1) s += ",";
    return s + ")";
}

inline void require_dtype(const py::array& a, const char* name, DT d) {
    if (!is_dt(a, d)) value_error(name, " must have dtype ", dt_name(d), ", got ", dtype_str(a));
}

// One of two dtypes (int32 or int64 maps).
inline DT require_dtype2(const py::array& a, const char* name, DT d1, DT d2) {
    if (is_dt(a, d1)) return d1;
    if (is_dt(a, d2)) return d2;
    value_error(name, " must have dtype ", dt_name(d1), " or ", dt_name(d2), ", got ", dtype_str(a));
}

inline void require_ndim(const py::array& a, const char* name, int nd) {
    if (a.ndim() != nd)
        value_error(name, " must be ", nd, "-D, got shape ", shape_str(a));
}

inline void require_contig(const py::array& a, const char* name) {
    if (!(a.flags() & py::array::c_style))
        value_error(name, " must be C-contiguous (use np.ascontiguousarray), got strides of a ",
                    "non-contiguous array of shape ", shape_str(a));
}

inline void require_writeable(const py::array& a, const char* name) {
    if (!a.writeable()) value_error(name, " must be writeable (got a read-only array)");
}

// dtype + ndim (-1: any) + C-contiguity (+ writeability) in one call.
inline void require(const py::array& a, const char* name, DT d, int nd, bool writeable = false) {
    require_dtype(a, name, d);
    if (nd >= 0) require_ndim(a, name, nd);
    require_contig(a, name);
    if (writeable) require_writeable(a, name);
}

template <class T>
inline const T* cdata(const py::array& a) {
    return static_cast<const T*>(a.data());
}
template <class T>
inline T* mdata(py::array& a) {
    return static_cast<T*>(a.mutable_data());
}

inline uint64_t nbytes(const py::array& a) { return static_cast<uint64_t>(a.nbytes()); }

// Python integer (or anything with __index__) -> uint64 in [0, maxv].
inline uint64_t to_u64(py::handle h, const char* name, uint64_t maxv = UINT64_MAX) {
    py::object v = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
    if (!v) throw py::error_already_set();
    int overflow = 0;
    long long s = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
    if (s == -1 && overflow == 0 && PyErr_Occurred()) throw py::error_already_set();
    unsigned long long u;
    if (overflow < 0 || (overflow == 0 && s < 0)) {
        value_error(name, " must be >= 0, got ", py::str(v).cast<std::string>());
    } else if (overflow == 0) {
        u = static_cast<unsigned long long>(s);
    } else {
        u = PyLong_AsUnsignedLongLong(v.ptr());
        if (u == static_cast<unsigned long long>(-1) && PyErr_Occurred()) {
            PyErr_Clear();
            value_error(name, " = ", py::str(v).cast<std::string>(), " does not fit in 64 bits");
        }
    }
    if (u > maxv) value_error(name, " = ", u, " out of range [0, ", maxv, "]");
    return u;
}

// Python integer -> int64 in [lo, hi].
inline int64_t to_i64(py::handle h, const char* name, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX) {
    py::object v = py::reinterpret_steal<py::object>(PyNumber_Index(h.ptr()));
    if (!v) throw py::error_already_set();
    int overflow = 0;
    long long s = PyLong_AsLongLongAndOverflow(v.ptr(), &overflow);
    if (s == -1 && overflow == 0 && PyErr_Occurred()) throw py::error_already_set();
    if (overflow != 0 || s < lo || s > hi)
        value_error(name, " = ", py::str(v).cast<std::string>(), " out of range [", lo, ", ", hi, "]");
    return s;
}

// A 1-D int32/int64 map (rank_to_node, local_rank_of) copied into int64.
inline std::vector<int64_t> int_map(const py::array& a, const char* name) {
    DT d = require_dtype2(a, name, DT::I32, DT::I64);
    require_ndim(a, name, 1);
    require_contig(a, name);
    std::vector<int64_t> out(static_cast<size_t>(a.shape(0)));
    if (d == DT::I32) {
        const int32_t* p = cdata<int32_t>(a);
        for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
    } else {
        const int64_t* p = cdata<int64_t>(a);
        for (size_t i = 0; i < out.size(); ++i) out[i] = p[i];
    }
    return out;
}

template <class T>
inline py::array_t<T> new_array(std::vector<py::ssize_t> shape) {
    return py::array_t<T>(shape);
}

// Registration hooks, one per concern file.
void register_packet(py::module_& m);
void register_plan(py::module_& m);
void register_pack(py::module_& m);
void register_reduce(py::module_& m);
void register_sync(py::module_& m);
void register_views(py::module_& m);

}  // namespace mw
