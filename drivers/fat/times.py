"""DOS dates and times, converted as the kernel's ``fat_time_fat2unix`` (fs/fat/misc.c).

A date is ``year-1980 << 9 | month << 5 | day``, a time ``hour << 11 | minute << 5 |
second / 2``, both in local time: FAT does not say which zone.  Out-of-range fields are
taken as the kernel takes them (month and day 0 count as 1, a month above 12 adds no
days, seconds up to 62 and hours up to 31 just add up), so every 16-bit pair converts.
The zone is a fixed offset chosen at mount, as the kernel's ``sys_tz`` or ``tz=UTC`` /
``time_offset=``: not the daylight-saving rule of each date.
"""

from __future__ import annotations

import time

__all__ = ["fat_to_unix", "local_offset"]

SECS_PER_DAY = 86400
#: Days between 1970-01-01 and 1980-01-01 (two leap days).
DAYS_DELTA = 365 * 10 + 2
#: 2100 (year 120 of the FAT epoch) is not a leap year.
YEAR_2100 = 120
#: Days before the first of each month in a non-leap year, by month number (0 and 13-15: 0).
_DAYS_BEFORE_MONTH = (0, 0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 0, 0, 0)


#: Seconds of each 16-bit date and time value met so far (at most 65536 of each).
_DAYS: dict[int, int] = {}
_TIMES: dict[int, int] = {}


def fat_to_unix(fat_time: int, fat_date: int, offset: int) -> int:
    """Seconds since the epoch of a DOS time and date, plus ``offset`` seconds (local -> UTC)."""
    fat_date &= 0xFFFF
    fat_time &= 0xFFFF
    day = _DAYS.get(fat_date)
    if day is None:
        day = _DAYS[fat_date] = _date_seconds(fat_date)
    seconds = _TIMES.get(fat_time)
    if seconds is None:
        seconds = _TIMES[fat_time] = _time_seconds(fat_time)
    return day + seconds + offset


def _time_seconds(fat_time: int) -> int:
    seconds = (fat_time & 0x1F) << 1
    seconds += ((fat_time >> 5) & 0x3F) * 60
    return seconds + (fat_time >> 11) * 3600


def _date_seconds(fat_date: int) -> int:
    """Seconds from the epoch to the start of a DOS date (UTC)."""
    year = fat_date >> 9
    month = max(1, (fat_date >> 5) & 0xF)
    day = max(1, fat_date & 0x1F) - 1
    leap_days = (year + 3) // 4
    if year > YEAR_2100:
        leap_days -= 1
    if year & 3 == 0 and year != YEAR_2100 and month > 2:
        leap_days += 1
    days = year * 365 + leap_days + _DAYS_BEFORE_MONTH[month] + day + DAYS_DELTA
    return days * SECS_PER_DAY


def local_offset() -> int:
    """Seconds to add to local time to get UTC, for the zone this process runs in now."""
    return -time.localtime().tm_gmtoff
