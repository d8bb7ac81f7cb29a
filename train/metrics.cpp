#include "metrics.hpp"

#include <cerrno>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>

#include <fmt/core.h>

#include "../backend/error.hpp"

namespace xg::training {

std::string csv_quote(const std::string& s) {
  if (s.find_first_of(",\"\r\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) {
    if (c == '"') q += '"';
    q += c;
  }
  q += '"';
  return q;
}

std::string CsvValue::field() const {
  if (const auto* i = std::get_if<std::int64_t>(&v_)) return fmt::format("{}", *i);
  if (const auto* d = std::get_if<double>(&v_)) return fmt::format("{}", *d);
  return csv_quote(std::get<std::string>(v_));
}

CsvLog::CsvLog(const std::string& path, std::vector<std::string> columns, bool append)
    : path_(path), columns_(std::move(columns)) {
  if (columns_.empty()) throw Error(fmt::format("CsvLog: '{}': no columns", path_));
  for (std::size_t i = 0; i < columns_.size(); ++i) {
    if (columns_[i].empty()) throw Error(fmt::format("CsvLog: '{}': column {} has an empty name", path_, i));
    for (std::size_t j = 0; j < i; ++j)
      if (columns_[i] == columns_[j])
        throw Error(fmt::format("CsvLog: '{}': column '{}' appears twice", path_, columns_[i]));
  }
  bool keep = false;
  if (append) {
    std::ifstream probe(path_, std::ios::binary);
    keep = probe && probe.peek() != std::ifstream::traits_type::eof();
  }
  if (keep) {
    const auto rows = read_csv(path_);
    if (rows.empty() || rows[0] != columns_) {
      const auto join = [](const std::vector<std::string>& v) {
        std::string j;
        for (const auto& c : v) j += (j.empty() ? "" : ",") + c;
        return j;
      };
      throw Error(fmt::format("CsvLog: cannot append to '{}': its header is '{}', the log's columns are '{}'", path_,
                              rows.empty() ? std::string() : join(rows[0]), join(columns_)));
    }
    rows_ = static_cast<std::int64_t>(rows.size()) - 1;
  }
  file_ = std::fopen(path_.c_str(), keep ? "ab" : "wb");
  if (file_ == nullptr)
    throw IOError(fmt::format("CsvLog: cannot open '{}' for writing: {}", path_, std::strerror(errno)));
  if (keep) return;
  std::string header;
  for (std::size_t i = 0; i < columns_.size(); ++i) {
    if (i) header += ',';
    header += csv_quote(columns_[i]);
  }
  write_line(header);
}

CsvLog::~CsvLog() {
  if (file_ != nullptr) std::fclose(file_);
}

void CsvLog::log(const std::vector<std::pair<std::string, CsvValue>>& row) {
  // Linear lookups: a log has a handful of columns and a row is written per step at most.
  std::vector<const CsvValue*> cells(columns_.size(), nullptr);
  for (const auto& [name, value] : row) {
    std::size_t c = 0;
    while (c < columns_.size() && columns_[c] != name) ++c;
    if (c == columns_.size()) {
      std::string known;
      for (const auto& k : columns_) known += (known.empty() ? "" : ", ") + k;
      throw Error(fmt::format("CsvLog::log: '{}': unknown column '{}' (columns: {})", path_, name, known));
    }
    if (cells[c] != nullptr) throw Error(fmt::format("CsvLog::log: '{}': column '{}' given twice", path_, name));
    cells[c] = &value;
  }
  std::string line;
  for (std::size_t c = 0; c < cells.size(); ++c) {
    if (c) line += ',';
    if (cells[c] != nullptr) line += cells[c]->field();
  }
  write_line(line);
  ++rows_;
}

void CsvLog::write_line(const std::string& line) {
  // RFC 4180 ends records with CRLF; plain LF is what every CSV reader (and tail) expects.
  if (std::fputs(line.c_str(), file_) < 0 || std::fputc('\n', file_) == EOF || std::fflush(file_) != 0)
    throw IOError(fmt::format("CsvLog: writing '{}' failed: {}", path_, std::strerror(errno)));
}

std::vector<std::vector<std::string>> read_csv(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IOError(fmt::format("read_csv: cannot open '{}'", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();

  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, field_started = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"') {
        if (i + 1 < text.size() && text[i + 1] == '"') {
          field += '"';
          ++i;
        } else {
          quoted = false;
        }
      } else {
        field += c;
      }
    } else if (c == '"' && field.empty()) {
      quoted = true;
      field_started = true;
    } else if (c == ',') {
      row.push_back(std::move(field));
      field.clear();
      field_started = true;  // a trailing comma still means one more (empty) field
    } else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      row.push_back(std::move(field));
      field.clear();
      rows.push_back(std::move(row));
      row.clear();
      field_started = false;
    } else {
      field += c;
      field_started = true;
    }
  }
  if (quoted) throw IOError(fmt::format("read_csv: '{}': a quoted field is not closed", path));
  if (field_started || !row.empty()) {
    row.push_back(std::move(field));
    rows.push_back(std::move(row));
  }
  return rows;
}

std::vector<double> read_csv_column(const std::string& path, const std::string& name) {
  const auto rows = read_csv(path);
  if (rows.empty()) throw Error(fmt::format("read_csv_column: '{}' is empty (no header)", path));
  std::size_t c = 0;
  while (c < rows[0].size() && rows[0][c] != name) ++c;
  if (c == rows[0].size()) throw Error(fmt::format("read_csv_column: '{}' has no column '{}'", path, name));
  std::vector<double> out;
  out.reserve(rows.size() - 1);
  for (std::size_t r = 1; r < rows.size(); ++r) {
    const std::string f = c < rows[r].size() ? rows[r][c] : std::string();
    if (f.empty()) {
      out.push_back(std::numeric_limits<double>::quiet_NaN());
      continue;
    }
    // strtod, not from_chars: it reads "inf" / "nan" as fmt writes them on every libstdc++.
    char* end = nullptr;
    const double v = std::strtod(f.c_str(), &end);
    if (end != f.c_str() + f.size())
      throw Error(fmt::format("read_csv_column: '{}': column '{}', row {}: '{}' is not a number", path, name, r, f));
    out.push_back(v);
  }
  return out;
}

}  // namespace xg::training
