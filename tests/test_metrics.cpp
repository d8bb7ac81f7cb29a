#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include <xgrad/train/metrics.hpp>

#include "helpers.hpp"

using xg::training::CsvLog;
using xg::training::read_csv;
using xg::training::read_csv_column;

namespace {

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("xgrad_test_metrics_" + name)).string();
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

TEST_CASE("metrics: header, rows, missing columns empty, flushed after each row") {
  const std::string path = temp_path("basic.csv");
  CsvLog log(path, {"step", "loss", "lr"});
  CHECK(slurp(path) == "step,loss,lr\n");
  log.log({{"step", 10}, {"loss", 1.25}});
  // Visible before the log is closed: each row is flushed.
  CHECK(slurp(path) == "step,loss,lr\n10,1.25,\n");
  log.log({{"lr", 0.001}, {"step", 20}});
  CHECK(slurp(path) == "step,loss,lr\n10,1.25,\n20,,0.001\n");
  CHECK(log.rows() == 2);
  std::filesystem::remove(path);
}

TEST_CASE("metrics: doubles round-trip exactly") {
  const std::string path = temp_path("roundtrip.csv");
  const std::vector<double> values = {0.1, 1.0 / 3.0, 2.718281828459045, 1e-300, -123456789.125, 6.02214076e23,
                                      std::nextafter(1.0, 2.0)};
  {
    CsvLog log(path, {"i", "v"});
    for (std::size_t i = 0; i < values.size(); ++i) log.log({{"i", static_cast<long>(i)}, {"v", values[i]}});
    log.log({{"i", 99}});  // v missing
  }
  const auto v = read_csv_column(path, "v");
  REQUIRE(v.size() == values.size() + 1);
  for (std::size_t i = 0; i < values.size(); ++i) CHECK(v[i] == values[i]);  // bit-exact
  CHECK(std::isnan(v.back()));
  const auto idx = read_csv_column(path, "i");
  CHECK(idx.front() == 0.0);
  CHECK(idx.back() == 99.0);
  // Integers are written without a decimal point.
  CHECK(slurp(path).find("\n99,\n") != std::string::npos);
  std::filesystem::remove(path);
}

TEST_CASE("metrics: non-finite values are written and read back") {
  const std::string path = temp_path("nonfinite.csv");
  {
    CsvLog log(path, {"loss"});
    log.log({{"loss", std::numeric_limits<double>::infinity()}});
    log.log({{"loss", std::nan("")}});
  }
  const auto v = read_csv_column(path, "loss");
  REQUIRE(v.size() == 2);
  CHECK(std::isinf(v[0]));
  CHECK(std::isnan(v[1]));
  std::filesystem::remove(path);
}

TEST_CASE("metrics: strings are quoted per RFC 4180 only when needed") {
  CHECK(xg::training::csv_quote("plain") == "plain");
  CHECK(xg::training::csv_quote("a,b") == "\"a,b\"");
  CHECK(xg::training::csv_quote("say \"hi\"") == "\"say \"\"hi\"\"\"");
  CHECK(xg::training::csv_quote("two\nlines") == "\"two\nlines\"");
  CHECK(xg::training::csv_quote("") == "");

  const std::string path = temp_path("strings.csv");
  {
    CsvLog log(path, {"step", "note", "name, with comma"});
    log.log({{"step", 1}, {"note", "warmup, lr \"low\""}, {"name, with comma", "x"}});
    log.log({{"step", 2}, {"note", std::string("multi\nline")}});
  }
  CHECK(slurp(path) ==
        "step,note,\"name, with comma\"\n"
        "1,\"warmup, lr \"\"low\"\"\",x\n"
        "2,\"multi\nline\",\n");
  const auto rows = read_csv(path);
  REQUIRE(rows.size() == 3);
  CHECK(rows[0][2] == "name, with comma");
  CHECK(rows[1][1] == "warmup, lr \"low\"");
  CHECK(rows[2][1] == "multi\nline");
  CHECK(rows[2][2] == "");
  std::filesystem::remove(path);
}

TEST_CASE("metrics: bad input") {
  const std::string path = temp_path("bad.csv");
  CsvLog log(path, {"step", "loss"});
  CHECK_THROWS_WITH_AS(log.log({{"step", 1}, {"acc", 0.5}}), doctest::Contains("unknown column 'acc'"), xg::Error);
  CHECK_THROWS_WITH_AS(log.log({{"step", 1}, {"step", 2}}), doctest::Contains("given twice"), xg::Error);
  // A rejected row writes nothing.
  CHECK(slurp(path) == "step,loss\n");
  CHECK_THROWS_WITH_AS(CsvLog(temp_path("e.csv"), {}), doctest::Contains("no columns"), xg::Error);
  CHECK_THROWS_WITH_AS(CsvLog(temp_path("e.csv"), {"a", "a"}), doctest::Contains("'a' appears twice"), xg::Error);
  CHECK_THROWS_AS(CsvLog(temp_path("e.csv"), {"a", ""}), xg::Error);

  const std::string missing = "/nonexistent_dir_xgrad/m.csv";
  CHECK_THROWS_WITH_AS(CsvLog(missing, {"a"}), doctest::Contains(missing.c_str()), xg::IOError);
  CHECK_THROWS_WITH_AS(read_csv_column(missing, "a"), doctest::Contains(missing.c_str()), xg::IOError);
  CHECK_THROWS_WITH_AS(read_csv_column(path, "acc"), doctest::Contains("no column 'acc'"), xg::Error);

  const std::string broken = temp_path("broken.csv");
  {
    std::ofstream out(broken);
    out << "a,b\n1,\"open\n";
  }
  CHECK_THROWS_AS(read_csv(broken), xg::IOError);
  {
    std::ofstream out(broken);
    out << "a\nxyz\n";
  }
  CHECK_THROWS_WITH_AS(read_csv_column(broken, "a"), doctest::Contains("not a number"), xg::Error);
  std::filesystem::remove(broken);
  std::filesystem::remove(path);
}

TEST_CASE("metrics: read_csv handles CRLF and a missing final newline") {
  const std::string path = temp_path("crlf.csv");
  {
    std::ofstream out(path, std::ios::binary);
    out << "x,y\r\n1,2\r\n3,4";
  }
  const auto rows = read_csv(path);
  REQUIRE(rows.size() == 3);
  CHECK(rows[2] == std::vector<std::string>{"3", "4"});
  CHECK(read_csv_column(path, "y") == std::vector<double>{2.0, 4.0});
  std::filesystem::remove(path);
}

TEST_CASE("metrics: append continues a log with the same header, and refuses another header") {
  const std::string path = temp_path("append.csv");
  {
    CsvLog log(path, {"step", "loss"});
    log.log({{"step", std::size_t{1}}, {"loss", 2.5}});  // size_t counts are accepted
  }
  {
    CsvLog log(path, {"step", "loss"}, true);
    CHECK(log.rows() == 1);
    log.log({{"step", 2u}, {"loss", 2.0}});
    CHECK(log.rows() == 2);
  }
  CHECK(slurp(path) == "step,loss\n1,2.5\n2,2\n");
  CHECK_THROWS_WITH_AS(CsvLog(path, {"step", "acc"}, true), doctest::Contains("header is 'step,loss'"), xg::Error);
  CHECK(slurp(path) == "step,loss\n1,2.5\n2,2\n");  // untouched by the refusal
  // Appending to a missing or empty file starts it with the header.
  std::filesystem::remove(path);
  {
    CsvLog log(path, {"a"}, true);
    log.log({{"a", 1}});
  }
  CHECK(slurp(path) == "a\n1\n");
  std::filesystem::remove(path);
}
