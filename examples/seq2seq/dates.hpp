#pragma once
// The synthetic translation task of the seq2seq example: a calendar date written the way
// people write it ("Thursday, 26 November 2026", "11/26/26", "26 nov. 2026", ...) -> ISO
// 8601 ("2026-11-26"). Dates run from 1950-01-01 to 2049-12-31, so a two-digit year is
// never ambiguous: 50-99 are 19xx, 00-49 are 20xx. The only formats that put the day
// first with slashes (DD/MM/YYYY) write a four-digit year, the month-first ones
// (MM/DD/YY) a two-digit year, so every string has exactly one reading; the weekday,
// where written, is the true one.
#include <array>
#include <cstdint>
#include <string>

#include <fmt/core.h>
#include <xgrad/autograd/random.hpp>

namespace dates {

struct Date {
  int year, month, day;  // month 1-12, day 1-31
  int weekday;           // 0 = Monday
};

// Days since 1970-01-01 -> civil date (Howard Hinnant's algorithm, proleptic Gregorian).
inline Date from_days(std::int64_t z) {
  z += 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const int d = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
  const int m = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
  const int y = static_cast<int>(yoe + era * 400 + (m <= 2));
  // 1970-01-01 was a Thursday (weekday 3 with Monday = 0).
  const int wd = static_cast<int>(((z - 719468) % 7 + 7 + 3) % 7);
  return {y, m, d, wd};
}

// The day range of the task: 1950-01-01 .. 2049-12-31 as days since 1970-01-01.
inline constexpr std::int64_t kFirstDay = -7305;
inline constexpr std::int64_t kLastDay = 29219;

inline constexpr std::array<const char*, 12> kMonths = {"January", "February", "March",     "April",   "May",      "June",
                                                        "July",    "August",   "September", "October", "November", "December"};
inline constexpr std::array<const char*, 7> kWeekdays = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                                         "Friday", "Saturday", "Sunday"};
inline constexpr int kNumFormats = 18;

inline std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return s;
}
inline std::string upper(std::string s) {
  for (char& c : s) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
  return s;
}
inline std::string ordinal(int d) {
  const char* suffix = (d % 10 == 1 && d != 11) ? "st" : (d % 10 == 2 && d != 12) ? "nd" : (d % 10 == 3 && d != 13) ? "rd" : "th";
  return fmt::format("{}{}", d, suffix);
}

// The date in human format `format` (0 .. kNumFormats-1).
inline std::string human(const Date& t, int format) {
  const std::string month = kMonths[t.month - 1], mon = month.substr(0, 3);
  const std::string weekday = kWeekdays[t.weekday], wd = weekday.substr(0, 3);
  const int yy = t.year % 100;
  switch (format) {
    case 0: return fmt::format("{}, {} {} {}", weekday, t.day, month, t.year);     // Thursday, 26 November 2026
    case 1: return fmt::format("{:02}/{:02}/{:02}", t.month, t.day, yy);           // 11/26/26
    case 2: return fmt::format("{} {}. {}", t.day, lower(mon), t.year);            // 26 nov. 2026
    case 3: return fmt::format("{} {}, {}", month, t.day, t.year);                 // November 26, 2026
    case 4: return fmt::format("{}.{:02}.{:02}", t.year, t.month, t.day);          // 2026.11.26
    case 5: return fmt::format("{:02}-{}-{}", t.day, mon, t.year);                 // 26-Nov-2026
    case 6: return fmt::format("{} {} {} {}", wd, t.day, mon, t.year);             // Thu 26 Nov 2026
    case 7: return fmt::format("{:02}.{:02}.{}", t.day, t.month, t.year);          // 26.11.2026
    case 8: return fmt::format("{} {} {}", lower(mon), t.day, t.year);             // nov 26 2026
    case 9: return fmt::format("{} of {}, {}", ordinal(t.day), month, t.year);     // 26th of November, 2026
    case 10: return fmt::format("{}-{:02}-{:02}", t.year, t.month, t.day);         // 2026-11-26
    case 11: return fmt::format("{} {} {} {}", lower(weekday), lower(month), ordinal(t.day), t.year);  // thursday november 26th 2026
    case 12: return fmt::format("{}{:02}{:02}", t.year, t.month, t.day);           // 20261126
    case 13: return fmt::format("{} {} {}", t.day, upper(month), t.year);          // 26 NOVEMBER 2026
    case 14: return fmt::format("{}/{}/{:02}", t.month, t.day, yy);                // 11/26/26, 1/5/26
    case 15: return fmt::format("{}. {}, {}", mon, t.day, t.year);                 // Nov. 26, 2026
    case 16: return fmt::format("{:02}/{:02}/{}", t.day, t.month, t.year);         // 26/11/2026
    default: return fmt::format("{}, {} {}, {}", wd, mon, t.day, t.year);          // Thu, Nov 26, 2026
  }
}

inline std::string iso(const Date& t) { return fmt::format("{}-{:02}-{:02}", t.year, t.month, t.day); }

// Whether a day belongs to the held-out set (~10% of days, a fixed hash of the day, so
// no test date is ever seen in training in any format).
inline bool held_out(std::int64_t day) {
  std::uint64_t h = static_cast<std::uint64_t>(day - kFirstDay) * 0x9E3779B97F4A7C15ull;
  h ^= h >> 29;
  return h % 10 == 0;
}

struct Example {
  std::string source, target;
};

// One example from the training days (test = false) or the held-out days (test = true).
inline Example sample(xg::Generator& gen, bool test) {
  std::int64_t day;
  do day = gen.randint(kFirstDay, kLastDay + 1);
  while (held_out(day) != test);
  const Date t = from_days(day);
  return {human(t, static_cast<int>(gen.randint(0, kNumFormats))), iso(t)};
}

}  // namespace dates
