#pragma once
// A metrics log in CSV (RFC 4180), one row per log() call, flushed at once so a crashed or
// killed run keeps every row written so far and `tail -f` / a plotting script see live data.
//
//   xg::training::CsvLog log("run/metrics.csv", {"step", "loss", "lr"});
//   log.log({{"step", 10}, {"loss", 1.23}});   // lr left empty
//
// Numbers are written with fmt's "{}" (shortest text that reads back as the same double,
// so the file round-trips exactly); integers without a decimal point. Strings are quoted
// when they contain a comma, a quote, CR or LF (quotes doubled). The file is truncated on
// open (a fresh log per run), or appended to with append = true (a run resumed from a
// checkpoint continues its log).
#include <cstdint>
#include <cstdio>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "namespace.hpp"

namespace xg::training {

// One cell: an integer, a double or a string.
class CsvValue {
 public:
  CsvValue(int v) : v_(static_cast<std::int64_t>(v)) {}  // NOLINT: implicit by design
  CsvValue(long v) : v_(static_cast<std::int64_t>(v)) {}  // NOLINT
  CsvValue(long long v) : v_(static_cast<std::int64_t>(v)) {}  // NOLINT
  // Unsigned counts (size_t) are stored as int64: a step count never reaches 2^63.
  CsvValue(unsigned v) : v_(static_cast<std::int64_t>(v)) {}  // NOLINT
  CsvValue(unsigned long v) : v_(static_cast<std::int64_t>(v)) {}  // NOLINT
  CsvValue(unsigned long long v) : v_(static_cast<std::int64_t>(v)) {}  // NOLINT
  CsvValue(double v) : v_(v) {}  // NOLINT
  CsvValue(float v) : v_(static_cast<double>(v)) {}  // NOLINT
  CsvValue(const char* v) : v_(std::string(v)) {}  // NOLINT
  CsvValue(std::string v) : v_(std::move(v)) {}  // NOLINT
  // The CSV field text (quoted if needed).
  std::string field() const;

 private:
  std::variant<std::int64_t, double, std::string> v_;
};

// RFC 4180 quoting of one field: as is, or in quotes with quotes doubled.
std::string csv_quote(const std::string& s);

class CsvLog {
 public:
  // Creates (truncates) path and writes the header. With append, an existing non-empty
  // file is kept and new rows go after it; its header must equal `columns` (Error naming
  // both otherwise). No columns, an empty or duplicate column name: Error. The file cannot
  // be opened: IOError naming path.
  CsvLog(const std::string& path, std::vector<std::string> columns, bool append = false);
  ~CsvLog();
  CsvLog(const CsvLog&) = delete;
  CsvLog& operator=(const CsvLog&) = delete;

  // One row. A name not among the columns (or given twice) is an Error and writes
  // nothing; columns not given are left empty.
  void log(const std::vector<std::pair<std::string, CsvValue>>& row);

  const std::vector<std::string>& columns() const { return columns_; }
  const std::string& path() const { return path_; }
  std::int64_t rows() const { return rows_; }  // data rows in the file (earlier ones too when appending)

 private:
  void write_line(const std::string& line);

  std::string path_;
  std::vector<std::string> columns_;
  std::FILE* file_ = nullptr;
  std::int64_t rows_ = 0;
};

// Every row of a CSV file, split into fields (RFC 4180: quoted fields may hold commas,
// doubled quotes and newlines). IOError naming path when it cannot be read or a quote is
// not closed.
std::vector<std::vector<std::string>> read_csv(const std::string& path);
// The column `name` (by the header row) as doubles; an empty field is NaN. IOError for an
// unreadable file, Error naming the column when it is absent or a field is not a number.
std::vector<double> read_csv_column(const std::string& path, const std::string& name);

}  // namespace xg::training
