// Module multiwrite._core: exceptions, then one registration per concern file.
#include "arrays.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = R"(multiwrite._core: the C++ core of multiwrite (see docs/core_api.md).

Works on NumPy arrays only (bfloat16 travels as uint16 bits), validates every size and index
before touching memory, raises ValueError (PacketError for malformed packets and record buffers)
with a precise message, and releases the GIL while touching bulk data.)";

    // Every docstring starts with its own Python signature (with shapes and dtypes below it).
    pybind11::options options;
    options.disable_function_signatures();

    static pybind11::exception<mw::PacketError> packet_error(m, "PacketError", PyExc_ValueError);
    packet_error.doc() = "A malformed, truncated or inconsistent packet or record buffer (a ValueError).";
    pybind11::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const mw::PacketError& e) {
            pybind11::set_error(packet_error, e.what());
        } catch (const mw::ValueError& e) {
            pybind11::set_error(PyExc_ValueError, e.what());
        }
    });

    mw::register_packet(m);
    mw::register_plan(m);
    mw::register_pack(m);
    mw::register_reduce(m);
    mw::register_sync(m);
    mw::register_views(m);
}
