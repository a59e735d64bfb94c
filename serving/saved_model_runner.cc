// saved_model_runner: loads a SavedModel the way TF Serving does (the C++ loader,
// LoadSavedModel with the "serve" tag, no Python) and runs one of its signatures.
//
//   saved_model_runner --model_dir=DIR [--op_library=LIB.so[,...]] [--signature=KEY]
//                      --inputs=IN.tfrecord[,...] [--outputs=OUT.tfrecord[,...]]
//                      [--warmup=N] [--repeats=N] [--report=REPORT.tfrecord]
//
// Tensors travel in TFRecord files of tensorflow.NamedTensorProto records (one record per
// named tensor), which Python writes with tf.io.TFRecordWriter and tf.make_tensor_proto.
// Each --inputs file is one request: a tensor per signature input, named by the input's
// key. Its outputs (a tensor per signature output key) go to the matching --outputs file.
// Each request runs `warmup` untimed times, then `repeats` timed times. The report holds
// "load_seconds" (double), "peak_rss_bytes" (int64) and, per request i,
// "latency_seconds_<i>" (double [repeats]).
//
// --op_library is loaded before the SavedModel, so a graph holding the library's ops
// (a native tt_keras export) loads; without it such a graph fails with "Op type not
// registered", as in a stock TF Serving.

#include <sys/resource.h>

#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor.pb.h"
#include "tensorflow/core/lib/io/record_reader.h"
#include "tensorflow/core/lib/io/record_writer.h"
#include "tensorflow/core/platform/env.h"
#include "tensorflow/core/protobuf/meta_graph.pb.h"
#include "tensorflow/core/protobuf/named_tensor.pb.h"
#include "tensorflow/core/public/session.h"
#include "tensorflow/core/util/command_line_flags.h"

namespace {

using NamedTensors = std::vector<std::pair<std::string, tensorflow::Tensor>>;

absl::Status ReadTensors(const std::string& path, NamedTensors* out) {
  std::unique_ptr<tensorflow::RandomAccessFile> file;
  TF_RETURN_IF_ERROR(tensorflow::Env::Default()->NewRandomAccessFile(path, &file));
  tensorflow::io::SequentialRecordReader reader(file.get());
  tensorflow::tstring record;
  while (true) {
    absl::Status status = reader.ReadRecord(&record);
    if (absl::IsOutOfRange(status)) break;  // end of file
    TF_RETURN_IF_ERROR(status);
    tensorflow::NamedTensorProto named;
    if (!named.ParseFromArray(record.data(), static_cast<int>(record.size()))) {
      return absl::InvalidArgumentError("--inputs file " + path +
                                        " holds a record that is not a NamedTensorProto");
    }
    tensorflow::Tensor tensor;
    if (!tensor.FromProto(named.tensor())) {
      return absl::InvalidArgumentError("--inputs file " + path + ": tensor '" + named.name() +
                                        "' is not a valid TensorProto");
    }
    out->emplace_back(named.name(), std::move(tensor));
  }
  return absl::OkStatus();
}

absl::Status WriteTensors(const std::string& path, const NamedTensors& tensors) {
  std::unique_ptr<tensorflow::WritableFile> file;
  TF_RETURN_IF_ERROR(tensorflow::Env::Default()->NewWritableFile(path, &file));
  tensorflow::io::RecordWriter writer(file.get());
  for (const auto& [name, tensor] : tensors) {
    tensorflow::NamedTensorProto named;
    named.set_name(name);
    tensor.AsProtoTensorContent(named.mutable_tensor());
    TF_RETURN_IF_ERROR(writer.WriteRecord(named.SerializeAsString()));
  }
  TF_RETURN_IF_ERROR(writer.Close());
  return file->Close();
}

// The signature's feed (input key -> graph tensor name, in the request's order) or an error
// naming the keys that are missing or unknown.
absl::Status BuildFeed(const tensorflow::SignatureDef& signature, const NamedTensors& request,
                       const std::string& path,
                       std::vector<std::pair<std::string, tensorflow::Tensor>>* feed) {
  std::unordered_set<std::string> given;
  for (const auto& [key, tensor] : request) {
    auto it = signature.inputs().find(key);
    if (it == signature.inputs().end()) {
      std::vector<std::string> keys;
      for (const auto& [k, unused] : signature.inputs()) keys.push_back(k);
      return absl::InvalidArgumentError(
          "--inputs file " + path + " names input '" + key +
          "', which the signature does not have (it has: " + absl::StrJoin(keys, ", ") + ")");
    }
    given.insert(key);
    feed->emplace_back(it->second.name(), tensor);
  }
  for (const auto& [key, unused] : signature.inputs()) {
    if (!given.count(key)) {
      return absl::InvalidArgumentError("--inputs file " + path + " lacks input '" + key +
                                        "' of the signature");
    }
  }
  return absl::OkStatus();
}

// This process's peak resident memory. Linux's VmHWM belongs to the address space exec
// created; getrusage's ru_maxrss is not reset by exec, so after a fork from a large parent
// (a Python that built a model) it reports the parent's peak.
int64_t PeakRssBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) == 0) {
      return std::stoll(line.substr(6)) * 1024;  // "VmHWM:   123456 kB"
    }
  }
  struct rusage usage;
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;  // KiB on Linux
}

tensorflow::Tensor Scalar(double value) {
  tensorflow::Tensor t(tensorflow::DT_DOUBLE, tensorflow::TensorShape({}));
  t.scalar<double>()() = value;
  return t;
}

int Fail(const absl::Status& status) {
  std::cerr << "saved_model_runner: " << status << "\n";
  return 1;
}

std::vector<std::string> SplitList(const std::string& list) {
  if (list.empty()) return {};
  return absl::StrSplit(list, ',');
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_dir, op_libraries, signature_key = "serving_default", inputs, outputs, report;
  int32_t warmup = 0, repeats = 1;
  std::vector<tensorflow::Flag> flags = {
      tensorflow::Flag("model_dir", &model_dir, "SavedModel directory"),
      tensorflow::Flag("op_library", &op_libraries,
                       "op libraries (comma-separated) to load before the SavedModel"),
      tensorflow::Flag("signature", &signature_key, "signature key to run"),
      tensorflow::Flag("inputs", &inputs,
                       "request files (comma-separated): TFRecords of NamedTensorProto"),
      tensorflow::Flag("outputs", &outputs, "output files, one per --inputs file"),
      tensorflow::Flag("warmup", &warmup, "untimed runs of each request"),
      tensorflow::Flag("repeats", &repeats, "timed runs of each request"),
      tensorflow::Flag("report", &report, "file for load time, peak RSS and latencies"),
  };
  std::string usage = tensorflow::Flags::Usage(argv[0], flags);
  if (!tensorflow::Flags::Parse(&argc, argv, flags) || argc != 1 || model_dir.empty() ||
      inputs.empty()) {
    std::cerr << usage;
    return 2;
  }
  if (warmup < 0 || repeats < 1) {
    std::cerr << "saved_model_runner: --warmup must be >= 0 and --repeats >= 1, got " << warmup
              << " and " << repeats << "\n";
    return 2;
  }
  std::vector<std::string> input_paths = SplitList(inputs);
  std::vector<std::string> output_paths = SplitList(outputs);
  if (!output_paths.empty() && output_paths.size() != input_paths.size()) {
    std::cerr << "saved_model_runner: --outputs names " << output_paths.size()
              << " files but --inputs names " << input_paths.size() << "\n";
    return 2;
  }

  for (const std::string& library : SplitList(op_libraries)) {
    void* handle = nullptr;
    absl::Status status = tensorflow::Env::Default()->LoadDynamicLibrary(library.c_str(), &handle);
    if (!status.ok()) return Fail(status);
  }

  auto load_start = std::chrono::steady_clock::now();
  tensorflow::SavedModelBundle bundle;
  // "serve" is the tag tensorflow_model_server loads by default.
  absl::Status status = tensorflow::LoadSavedModel(
      tensorflow::SessionOptions(), tensorflow::RunOptions(), model_dir, {"serve"}, &bundle);
  if (!status.ok()) return Fail(status);
  double load_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - load_start).count();

  const auto& signatures = bundle.meta_graph_def.signature_def();
  auto found = signatures.find(signature_key);
  if (found == signatures.end()) {
    return Fail(absl::NotFoundError("the SavedModel has no signature '" + signature_key + "'"));
  }
  const tensorflow::SignatureDef& signature = found->second;
  std::vector<std::string> output_keys, fetches;
  for (const auto& [key, info] : signature.outputs()) {
    output_keys.push_back(key);
    fetches.push_back(info.name());
  }

  NamedTensors report_tensors = {{"load_seconds", Scalar(load_seconds)}};
  for (size_t i = 0; i < input_paths.size(); ++i) {
    NamedTensors request;
    std::vector<std::pair<std::string, tensorflow::Tensor>> feed;
    status = ReadTensors(input_paths[i], &request);
    if (status.ok()) status = BuildFeed(signature, request, input_paths[i], &feed);
    if (!status.ok()) return Fail(status);

    std::vector<tensorflow::Tensor> results;
    tensorflow::Tensor latencies(tensorflow::DT_DOUBLE, tensorflow::TensorShape({repeats}));
    for (int run = 0; run < warmup + repeats; ++run) {
      results.clear();
      auto start = std::chrono::steady_clock::now();
      status = bundle.session->Run(feed, fetches, {}, &results);
      auto stop = std::chrono::steady_clock::now();
      if (!status.ok()) return Fail(status);
      if (run >= warmup) {
        latencies.vec<double>()(run - warmup) = std::chrono::duration<double>(stop - start).count();
      }
    }
    report_tensors.emplace_back("latency_seconds_" + std::to_string(i), latencies);
    if (!output_paths.empty()) {
      NamedTensors named_results;
      for (size_t k = 0; k < output_keys.size(); ++k) {
        named_results.emplace_back(output_keys[k], results[k]);
      }
      status = WriteTensors(output_paths[i], named_results);
      if (!status.ok()) return Fail(status);
    }
  }

  tensorflow::Tensor rss(tensorflow::DT_INT64, tensorflow::TensorShape({}));
  rss.scalar<int64_t>()() = PeakRssBytes();
  report_tensors.emplace_back("peak_rss_bytes", rss);
  if (!report.empty()) {
    status = WriteTensors(report, report_tensors);
    if (!status.ok()) return Fail(status);
  }
  return 0;
}
