// pybind11 only: converts arguments, releases the GIL, maps C++ errors to Python ones. No logic.
// Arrays arrive as raw (pointer, dtype, shape, strides, device, stream) tuples built by
// geomfast/_array.py, which keeps their owners alive for the duration of the call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "geomfast/backend.hpp"
#include "geomfast/errors.hpp"
#include "geomfast/gram.hpp"

namespace py = pybind11;
using namespace geomfast;

namespace {

py::object g_nonfinite_error;

MatrixView make_view(uintptr_t ptr, int dtype, int64_t rows, int64_t cols, int64_t row_stride, int64_t col_stride,
                     int device_type, int device_index, uintptr_t stream) {
  if (dtype < 0 || dtype > 3) GF_THROW(TypeError, "[_core] unknown dtype code ", dtype);
  MatrixView v;
  v.data = reinterpret_cast<const void*>(ptr);
  v.dtype = static_cast<DType>(dtype);
  v.rows = rows;
  v.cols = cols;
  v.row_stride = row_stride;
  v.col_stride = col_stride;
  v.device = Device{device_type == 1 ? DeviceType::kCUDA : DeviceType::kCPU, device_index};
  v.stream = stream;
  return v;
}

Precision parse_precision(const std::string& p) {
  if (p == "highest") return Precision::kHighest;
  if (p == "fast") return Precision::kFast;
  GF_THROW(ValueError, "[GramAccumulator] precision must be 'highest' or 'fast', got '", p, "'");
}

// Solver options arrive as a dict; absent keys keep EigOptions' defaults.
EigOptions make_opts(const std::string& method, int64_t k, const py::dict& d) {
  EigOptions o;
  if (method == "full") o.method = EigMethod::kFull;
  else if (method == "randomized") o.method = EigMethod::kRandomized;
  else GF_THROW(ValueError, "[eigvalsh] method must be 'full' or 'randomized', got '", method, "'");
  o.k = k;
  auto get_i = [&](const char* key, int64_t& dst) {
    if (d.contains(key) && !d[key].is_none()) dst = d[key].cast<int64_t>();
  };
  get_i("oversample", o.oversample);
  get_i("block", o.block);
  get_i("n_iter", o.n_iter);
  get_i("tol_k", o.tol_k);
  get_i("max_iter", o.max_iter);
  if (d.contains("tol") && !d["tol"].is_none()) o.tol = d["tol"].cast<double>();
  if (d.contains("seed") && !d["seed"].is_none()) o.seed = d["seed"].cast<uint64_t>();
  if (d.contains("single_precision") && !d["single_precision"].is_none())
    o.single_precision = d["single_precision"].cast<bool>();
  return o;
}

py::array_t<double> to_numpy(const std::vector<double>& v) {
  py::array_t<double> a(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(double));
  return a;
}

py::array_t<double> to_numpy_2d(const std::vector<double>& v, int64_t d) {
  py::array_t<double> a({static_cast<py::ssize_t>(d), static_cast<py::ssize_t>(d)});
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(double));
  return a;
}

py::dict eig_info(const EigResult& r) {
  py::dict d;
  d["iterations"] = r.iterations;
  d["last_change"] = r.last_change;
  d["converged"] = r.converged;
  d["warnings"] = r.warnings;
  return d;
}

py::dict info_dict(const BackendInfo& b) {
  py::dict d;
  d["built"] = b.built;
  d["usable"] = b.usable;
  d["reason"] = b.reason;
  d["details"] = b.details;
  d["device_count"] = b.device_count;
  return d;
}

GramState state_from_arrays(int64_t dim, int64_t count, py::array_t<double, py::array::c_style | py::array::forcecast> shift,
                            py::array_t<double, py::array::c_style | py::array::forcecast> sum,
                            py::array_t<double, py::array::c_style | py::array::forcecast> gram) {
  GramState s;
  s.dim = dim;
  s.count = count;
  s.shift.assign(shift.data(), shift.data() + shift.size());
  s.sum.assign(sum.data(), sum.data() + sum.size());
  s.gram.assign(gram.data(), gram.data() + gram.size());
  return s;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "geomfast native core (C++/CUDA): Gram accumulation and eigensolvers";

  g_nonfinite_error = py::reinterpret_borrow<py::object>(
      PyErr_NewException("geomfast._core.NonFiniteError", PyExc_ValueError, nullptr));
  m.attr("NonFiniteError") = g_nonfinite_error;
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const NonFiniteError& e) {
      py::object exc = g_nonfinite_error(e.what());
      exc.attr("count") = e.count;
      exc.attr("first_row") = e.first_row;
      PyErr_SetObject(g_nonfinite_error.ptr(), exc.ptr());
    } catch (const TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const RuntimeError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  py::class_<GramBackend>(m, "Gram")
      .def(py::init([](int64_t dim, int device_type, int device_index, const std::string& precision) {
             return make_gram_backend(dim, Device{device_type == 1 ? DeviceType::kCUDA : DeviceType::kCPU, device_index},
                                      parse_precision(precision));
           }),
           py::arg("dim"), py::arg("device_type"), py::arg("device_index"), py::arg("precision"))
      .def_property_readonly("dim", &GramBackend::dim)
      .def_property_readonly("count", &GramBackend::count)
      .def_property_readonly("precision",
                             [](const GramBackend& g) { return g.precision() == Precision::kFast ? "fast" : "highest"; })
      .def("update",
           [](GramBackend& g, uintptr_t ptr, int dtype, int64_t rows, int64_t cols, int64_t rs, int64_t cs, int dt,
              int di, uintptr_t stream) {
             const MatrixView v = make_view(ptr, dtype, rows, cols, rs, cs, dt, di, stream);
             py::gil_scoped_release nogil;
             g.update(v);
           })
      .def("state",
           [](const GramBackend& g) {
             GramState s;
             {
               py::gil_scoped_release nogil;
               s = g.state();
             }
             return py::make_tuple(s.count, to_numpy(s.shift), to_numpy(s.sum), to_numpy_2d(s.gram, s.dim));
           })
      .def("raw_gram",
           [](const GramBackend& g) {
             std::vector<double> raw;
             {
               py::gil_scoped_release nogil;
               raw = raw_gram_from_state(g.state());
             }
             return to_numpy_2d(raw, g.dim());
           })
      .def("set_state",
           [](GramBackend& g, int64_t count, py::array_t<double, py::array::c_style | py::array::forcecast> shift,
              py::array_t<double, py::array::c_style | py::array::forcecast> sum,
              py::array_t<double, py::array::c_style | py::array::forcecast> gram) {
             GramState s = state_from_arrays(g.dim(), count, shift, sum, gram);
             py::gil_scoped_release nogil;
             g.set_state(s);
           })
      .def("add_state",
           [](GramBackend& g, int64_t count, py::array_t<double, py::array::c_style | py::array::forcecast> shift,
              py::array_t<double, py::array::c_style | py::array::forcecast> sum,
              py::array_t<double, py::array::c_style | py::array::forcecast> gram) {
             GramState s = state_from_arrays(g.dim(), count, shift, sum, gram);
             py::gil_scoped_release nogil;
             g.add_state(s);
           })
      .def("reset", &GramBackend::reset)
      .def("covariance",
           [](const GramBackend& g, int64_t ddof) {
             py::array_t<double> out({static_cast<py::ssize_t>(g.dim()), static_cast<py::ssize_t>(g.dim())});
             double* p = out.mutable_data();
             {
               py::gil_scoped_release nogil;
               g.covariance(ddof, p);
             }
             return out;
           })
      .def("spectrum",
           [](const GramBackend& g, int64_t ddof, const std::string& method, int64_t k, const py::dict& opts) {
             const EigOptions o = make_opts(method, k, opts);
             EigResult r;
             {
               py::gil_scoped_release nogil;
               r = g.spectrum(ddof, o);
             }
             return py::make_tuple(to_numpy(r.values), eig_info(r));
           });

  m.def(
      "spectra",
      [](const std::vector<const GramBackend*>& accs, int64_t ddof, const std::string& method, int64_t k,
         const py::dict& opts, const std::vector<bool>& uncentered) {
        const EigOptions o = make_opts(method, k, opts);
        std::vector<EigResult> rs;
        {
          py::gil_scoped_release nogil;
          rs = spectra(accs, ddof, o, uncentered);
        }
        py::list out;
        for (const EigResult& r : rs) out.append(py::make_tuple(to_numpy(r.values), eig_info(r)));
        return out;
      });

  m.def(
      "eigvalsh",
      [](uintptr_t ptr, int dtype, int64_t rows, int64_t cols, int64_t rs, int64_t cs, int dt, int di,
         uintptr_t stream, const std::string& method, int64_t k, const py::dict& opts) {
        const MatrixView v = make_view(ptr, dtype, rows, cols, rs, cs, dt, di, stream);
        const EigOptions o = make_opts(method, k, opts);
        EigResult r;
        {
          py::gil_scoped_release nogil;
          r = eigvalsh(v, o);
        }
        return py::make_tuple(to_numpy(r.values), eig_info(r));
      });

  m.def(
      "eigvalsh_many",
      [](const std::vector<std::tuple<uintptr_t, int, int64_t, int64_t, int64_t, int64_t, int, int, uintptr_t>>& views,
         const std::string& method, int64_t k, const py::dict& opts) {
        std::vector<MatrixView> vs;
        vs.reserve(views.size());
        for (const auto& [ptr, dtype, rows, cols, rs, cs, dt, di, stream] : views)
          vs.push_back(make_view(ptr, dtype, rows, cols, rs, cs, dt, di, stream));
        const EigOptions o = make_opts(method, k, opts);
        std::vector<EigResult> rs;
        {
          py::gil_scoped_release nogil;
          rs = eigvalsh_many(vs, o);
        }
        py::list out;
        for (const EigResult& r : rs) out.append(py::make_tuple(to_numpy(r.values), eig_info(r)));
        return out;
      });

  m.def("backends", [] {
    py::dict d;
    d["cpu"] = info_dict(cpu_backend_info());
    d["cuda"] = info_dict(cuda_backend_info());
    return d;
  });
  // "" when the fast CPU Gram runs on AMX here, else why not.
  m.def("amx_unavailable_reason", [] { return cpu_amx_unavailable_reason(); });
  m.def("amx_exact_unavailable_reason", [] { return cpu_amx_exact_unavailable_reason(); });
  m.def("amx_emulation_unavailable_reason", [] { return cpu_amx_emulation_unavailable_reason(); });
  m.def("_cpu_pooled_lanes", [] { return cpu_pooled_lanes(); });  // tests: lanes are shared, then freed
  m.def(  // tests: the CPU thread pool's error path (see cpu_thread_pool_probe)
      "_cpu_thread_pool_probe",
      [](int nparts, const std::vector<int>& throw_parts, int sleep_ms) {
        if (nparts < 1 || sleep_ms < 0)
          GF_THROW(ValueError, "[_cpu_thread_pool_probe] expected nparts >= 1 and sleep_ms >= 0, got ", nparts,
                   " and ", sleep_ms);
        ThreadPoolProbe r;
        {
          py::gil_scoped_release nogil;
          r = cpu_thread_pool_probe(nparts, throw_parts, sleep_ms);
        }
        return py::make_tuple(r.size, r.error, r.ended);
      },
      py::arg("nparts"), py::arg("throw_parts"), py::arg("sleep_ms"));
  m.def("get_tuning", [] {
    const auto& t = gram_tuning();
    return py::make_tuple(t.block_rows, t.fast_flush_rows, t.fast_amx, t.exact_amx, t.amx_emulate);
  });
  m.def(
      "set_tuning",
      [](int64_t block_rows, int64_t fast_flush_rows, bool fast_amx, bool exact_amx, bool amx_emulate) {
        if (block_rows < 1 || fast_flush_rows < 1) GF_THROW(ValueError, "[set_tuning] values must be >= 1");
        gram_tuning().block_rows = block_rows;
        gram_tuning().fast_flush_rows = fast_flush_rows;
        gram_tuning().fast_amx = fast_amx;
        gram_tuning().exact_amx = exact_amx;
        gram_tuning().amx_emulate = amx_emulate;
      },
      py::arg("block_rows"), py::arg("fast_flush_rows"), py::arg("fast_amx") = true, py::arg("exact_amx") = true,
      py::arg("amx_emulate") = false);
}
