// dmfn.client.io._j2k_region: decode only a region of JPEG 2000 codestreams (DICOM frames).
//
// A served request needs the lesion's box of each slice, about 120 x 120 of 512 x 512 pixels.
// OpenJPEG decodes only the code-blocks a region touches (opj_set_decode_area), which halves
// the work of a CT slice (64 x 64 code-blocks, 5 levels: the coarse levels are decoded whole),
// and it runs without the GIL here, so slices decode on several threads. pydicom's plugins
// (pylibjpeg-openjpeg, GDCM) decode whole frames and hold the GIL. Measured in
// benchmarks/dicom_decode.py; docs/data.md has the figures.
//
// decode_regions(frames, rows, columns, row0, row1, col0, col1, threads) -> int32 array
// (n, row1 - row0, col1 - col0), (precision, signed) per frame, and an error text per frame ("" when
// decoded; a frame must be a single grey component of rows x columns), which the caller turns
// into an error naming the file.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <openjpeg.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace py = pybind11;

namespace {

struct Memory {
  const std::uint8_t* data;
  OPJ_SIZE_T size;
  OPJ_SIZE_T at;
};

OPJ_SIZE_T read_memory(void* out, OPJ_SIZE_T n, void* user) {
  auto* m = static_cast<Memory*>(user);
  if (m->at >= m->size) return static_cast<OPJ_SIZE_T>(-1);  // end of data, as OpenJPEG expects
  n = std::min(n, m->size - m->at);
  std::memcpy(out, m->data + m->at, n);
  m->at += n;
  return n;
}

OPJ_OFF_T skip_memory(OPJ_OFF_T n, void* user) {
  auto* m = static_cast<Memory*>(user);
  const auto at = static_cast<OPJ_OFF_T>(m->at);
  const OPJ_OFF_T to = std::clamp<OPJ_OFF_T>(at + n, 0, static_cast<OPJ_OFF_T>(m->size));
  m->at = static_cast<OPJ_SIZE_T>(to);
  return to - at;
}

OPJ_BOOL seek_memory(OPJ_OFF_T to, void* user) {
  auto* m = static_cast<Memory*>(user);
  if (to < 0 || static_cast<OPJ_SIZE_T>(to) > m->size) return OPJ_FALSE;
  m->at = static_cast<OPJ_SIZE_T>(to);
  return OPJ_TRUE;
}

void keep_message(const char* text, void* user) {
  auto* message = static_cast<std::string*>(user);
  if (message->empty()) *message = text;
  while (!message->empty() && (message->back() == '\n' || message->back() == ' '))
    message->pop_back();
}

void ignore_message(const char*, void*) {}

struct Region {
  int rows, columns, row0, row1, col0, col1;
};

struct Decoded {
  int precision = 0;
  bool is_signed = false;
  std::string error;  // empty when decoded
};

// Owns the OpenJPEG objects of one decode.
struct Codec {
  opj_stream_t* stream = nullptr;
  opj_codec_t* codec = nullptr;
  opj_image_t* image = nullptr;
  ~Codec() {
    if (image) opj_image_destroy(image);
    if (codec) opj_destroy_codec(codec);
    if (stream) opj_stream_destroy(stream);
  }
};

Decoded decode_one(const std::uint8_t* data, std::size_t size, const Region& r, std::int32_t* out) {
  Decoded result;
  Memory memory{data, size, 0};
  // a JP2 file starts with its signature box; a DICOM frame is normally a bare codestream
  const bool jp2 = size >= 12 && std::memcmp(data + 4, "jP  ", 4) == 0;
  Codec c;
  c.stream = opj_stream_create(std::min<std::size_t>(std::max<std::size_t>(size, 1), 1 << 20), OPJ_TRUE);
  c.codec = opj_create_decompress(jp2 ? OPJ_CODEC_JP2 : OPJ_CODEC_J2K);
  if (!c.stream || !c.codec) return {0, false, "out of memory"};
  opj_stream_set_read_function(c.stream, read_memory);
  opj_stream_set_skip_function(c.stream, skip_memory);
  opj_stream_set_seek_function(c.stream, seek_memory);
  opj_stream_set_user_data(c.stream, &memory, nullptr);
  opj_stream_set_user_data_length(c.stream, size);
  std::string message;
  opj_set_error_handler(c.codec, keep_message, &message);
  opj_set_warning_handler(c.codec, ignore_message, nullptr);
  opj_set_info_handler(c.codec, ignore_message, nullptr);
  opj_dparameters_t parameters;
  opj_set_default_decoder_parameters(&parameters);
  auto failed = [&](const char* what) {
    result.error = std::string(what) + (message.empty() ? "" : ": " + message);
    return result;
  };
  if (!opj_setup_decoder(c.codec, &parameters)) return failed("decoder setup failed");
  if (!opj_read_header(c.stream, c.codec, &c.image)) return failed("unreadable codestream header");
  const opj_image_t& image = *c.image;
  const auto width = static_cast<int>(image.x1 - image.x0);
  const auto height = static_cast<int>(image.y1 - image.y0);
  if (image.numcomps != 1 || width != r.columns || height != r.rows) {
    result.error = "holds " + std::to_string(image.numcomps) + " component(s) of " +
                   std::to_string(height) + " x " + std::to_string(width) +
                   ", the header declares 1 of " + std::to_string(r.rows) + " x " +
                   std::to_string(r.columns);
    return result;
  }
  if (!opj_set_decode_area(c.codec, c.image, static_cast<OPJ_INT32>(image.x0) + r.col0,
                           static_cast<OPJ_INT32>(image.y0) + r.row0,
                           static_cast<OPJ_INT32>(image.x0) + r.col1,
                           static_cast<OPJ_INT32>(image.y0) + r.row1))
    return failed("decode area refused");
  if (!opj_decode(c.codec, c.stream, c.image) || !opj_end_decompress(c.codec, c.stream))
    return failed("decoding failed");
  const opj_image_comp_t& plane = c.image->comps[0];
  const int h = r.row1 - r.row0, w = r.col1 - r.col0;
  if (!plane.data || static_cast<int>(plane.w) != w || static_cast<int>(plane.h) != h)
    return failed("decoded area has the wrong size");
  std::copy(plane.data, plane.data + static_cast<std::size_t>(w) * h, out);
  result.precision = static_cast<int>(plane.prec);
  result.is_signed = plane.sgnd != 0;
  return result;
}

py::tuple decode_regions(const py::list& frames, int rows, int columns, int row0, int row1,
                         int col0, int col1, int threads) {
  if (rows < 1 || columns < 1 || row0 < 0 || col0 < 0 || row1 > rows || col1 > columns ||
      row0 >= row1 || col0 >= col1)
    throw py::value_error("region [" + std::to_string(row0) + ":" + std::to_string(row1) + ", " +
                          std::to_string(col0) + ":" + std::to_string(col1) +
                          "] is empty or outside " + std::to_string(rows) + " x " +
                          std::to_string(columns));
  const Region region{rows, columns, row0, row1, col0, col1};
  const std::size_t n = frames.size();
  std::vector<std::pair<const std::uint8_t*, std::size_t>> spans;
  spans.reserve(n);
  for (const auto& item : frames) {
    if (!PyBytes_Check(item.ptr())) throw py::type_error("frames: every frame must be bytes");
    spans.emplace_back(reinterpret_cast<const std::uint8_t*>(PyBytes_AS_STRING(item.ptr())),
                       static_cast<std::size_t>(PyBytes_GET_SIZE(item.ptr())));
  }
  const std::size_t plane = static_cast<std::size_t>(row1 - row0) * (col1 - col0);
  py::array_t<std::int32_t> out({n, static_cast<std::size_t>(row1 - row0),
                                 static_cast<std::size_t>(col1 - col0)});
  std::int32_t* base = out.mutable_data();
  std::vector<Decoded> decoded(n);
  {
    py::gil_scoped_release released;  // the bytes stay alive: `frames` holds them
    std::atomic<std::size_t> next{0};
    auto work = [&] {
      for (std::size_t k = next++; k < n; k = next++) {
        try {  // nothing may leave a thread: std::terminate
          decoded[k] = decode_one(spans[k].first, spans[k].second, region, base + k * plane);
        } catch (const std::exception& err) {
          decoded[k].error = err.what();
        } catch (...) {
          decoded[k].error = "unknown error";
        }
      }
    };
    const int count = std::max(1, std::min<int>(threads, static_cast<int>(n)));
    std::vector<std::thread> pool;
    try {
      for (int t = 1; t < count; ++t) pool.emplace_back(work);
    } catch (const std::system_error&) {
      // no more threads: the ones started and this one share the frames
    }
    work();
    for (auto& thread : pool) thread.join();
  }
  py::list precision, errors;
  for (std::size_t k = 0; k < n; ++k) {
    precision.append(py::make_tuple(decoded[k].precision, decoded[k].is_signed));
    errors.append(decoded[k].error);
  }
  return py::make_tuple(out, precision, errors);
}

}  // namespace

PYBIND11_MODULE(_j2k_region, m) {
  m.doc() = "Region decoding of JPEG 2000 frames with OpenJPEG (dmfn.client.io.j2k).";
  m.def("decode_regions", &decode_regions, py::arg("frames"), py::arg("rows"),
        py::arg("columns"), py::arg("row0"), py::arg("row1"), py::arg("col0"), py::arg("col1"),
        py::arg("threads") = 1,
        "int32 (n, row1 - row0, col1 - col0) of each frame's region, (precision, signed) per "
        "frame, and per frame an error text (empty when it was decoded).");
  m.attr("OPENJPEG_VERSION") = opj_version();
}
