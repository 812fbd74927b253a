#include "io/hf_checkpoint.h"

#include <sys/stat.h>

#include <fstream>
#include <set>
#include <sstream>

#include "core/error.h"

namespace duo {

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

namespace {

bool is_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

nlohmann::json read_json_file(const std::string& path) {
  DUO_CHECK(is_file(path), "'{}' is missing (or not a regular file)", path);
  std::ifstream in(path, std::ios::binary);
  DUO_CHECK(in.good(), "cannot open '{}'", path);
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
}

std::unique_ptr<HfCheckpoint> HfCheckpoint::open(const std::string& dir_in) {
  std::unique_ptr<HfCheckpoint> c(new HfCheckpoint());
  std::string dir = dir_in;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  c->dir_ = dir;
  c->config_ = read_json_file(dir + "/config.json");
  DUO_CHECK(c->config_.is_object(), "{}/config.json is not a JSON object", dir);

  const std::string single = dir + "/model.safetensors", index = dir + "/model.safetensors.index.json";
  if (is_file(index)) {
    // Sharded: the index maps every tensor to its file; each file is opened once.
    const nlohmann::json idx = read_json_file(index);
    DUO_CHECK(idx.is_object() && idx.contains("weight_map") && idx["weight_map"].is_object(),
              "{}: no \"weight_map\" object", index);
    std::map<std::string, size_t> file_index;
    for (auto it = idx["weight_map"].begin(); it != idx["weight_map"].end(); ++it) {
      DUO_CHECK(it.value().is_string(), "{}: the file of tensor '{}' is not a string", index, it.key());
      const std::string file = it.value().get<std::string>();
      // A shard is a file of this directory: a path out of it is refused, not followed.
      DUO_CHECK(!file.empty() && file.find('/') == std::string::npos && file != "." && file != "..",
                "{}: tensor '{}' names the file '{}', which is not a file of this directory", index, it.key(), file);
      auto [f, added] = file_index.emplace(file, c->files_.size());
      if (added) c->files_.push_back(SafetensorsFile::open(dir + "/" + file));
      DUO_CHECK(c->files_[f->second]->find(it.key()) != nullptr, "{}: the index puts tensor '{}' in {}, which lacks it",
                index, it.key(), file);
      c->where_[it.key()] = f->second;
    }
    DUO_CHECK(!c->files_.empty(), "{}: the weight map is empty", index);
  } else if (is_file(single)) {
    c->files_.push_back(SafetensorsFile::open(single));
    for (const auto& [name, t] : c->files_[0]->tensors()) c->where_[name] = 0;
  } else {
    fail("{}: no model.safetensors and no model.safetensors.index.json (duo reads HF weights in safetensors "
         "only; pytorch_model.bin is not supported)",
         dir);
  }
  return c;
}

const SafetensorsTensor* HfCheckpoint::find(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : files_[it->second]->find(name);
}

const SafetensorsTensor& HfCheckpoint::tensor(const std::string& name) const {
  const SafetensorsTensor* t = find(name);
  DUO_CHECK(t != nullptr, "{}: the weights have no tensor '{}'", dir_, name);
  return *t;
}

const std::string& HfCheckpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? dir_ : files_[it->second]->path();
}

}  // namespace duo
