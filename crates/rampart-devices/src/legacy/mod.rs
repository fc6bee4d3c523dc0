//! Legacy PC devices: 16550A UART, i8042 (reset line), CMOS RTC, ACPI power management port.
