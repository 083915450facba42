/*
 * em_sim.c - run the edge-monitor microphone firmware in simavr.
 *
 * The harness plays the part of the board around the ATmega328P:
 *  - the microphone: each ADC conversion of A0 reads the next sample of a
 *    waveform file (raw int16 PCM, or raw uint16 10-bit ADC codes);
 *  - the ADC auto trigger: simavr 1.6 does not implement "Timer1 compare
 *    match B" as an ADC trigger source, so the harness forwards the Timer1
 *    COMPB interrupt to the ADC trigger input, as the silicon does;
 *  - the USB serial link: UART0 is bridged to a pseudo-terminal. Output is
 *    written with back-pressure (the simulation waits while the reader is
 *    behind), so no byte is lost however fast the simulation runs;
 *  - the alarm light and relay: changes of D7, D8 and D13 are logged.
 *
 * Everything observable goes to the events file, one line per event:
 *    pty <path>                          the serial port to open
 *    pin <D7|D8|D13> <0|1> <cycle> <adc_index>
 *    adc <adc_index> <cycle>             every --log-every conversions
 *    reset <cycle> <adc_index>           after SIGUSR1 reset the MCU
 *    speed <sim_seconds> <wall_seconds>  about once a wall-clock second
 *    wave_end <adc_index>                waveform exhausted (without --loop)
 * The cycle counter runs at 16 MHz, so it is the simulated clock.
 *
 * Usage: em_sim --firmware FILE.elf --wave FILE [--format int16|u10] [--loop]
 *               [--events FILE] [--pty-link PATH] [--log-every N]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "avr_adc.h"
#include "avr_ioport.h"
#include "avr_uart.h"
#include "sim_avr.h"
#include "sim_elf.h"
#include "sim_interrupts.h"
#include "sim_irq.h"

#define F_CPU_HZ 16000000u
#define VCC_MV 5000u
#define TIMER1_COMPB_VECTOR 12 /* ATmega328P vector number */
#define OUT_BUF_BYTES 4096
#define IO_PERIOD_CYCLES 16000u /* service the pty every 1 ms of simulated time */

static avr_t *g_avr;
static FILE *g_events;
static int g_master = -1;

static uint16_t *g_wave;
static size_t g_wave_len;
static int g_loop;
static uint64_t g_adc_index; /* conversions started so far */
static uint64_t g_log_every = 16000;
static int g_wave_end_logged;

static avr_irq_t *g_adc_irq;
static avr_irq_t *g_uart_in_irq;
static int g_uart_xon = 1;

static uint8_t g_out[OUT_BUF_BYTES];
static size_t g_out_len;

static volatile sig_atomic_t g_reset_requested;
static volatile sig_atomic_t g_stop_requested;

static void event(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void event(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(g_events, fmt, ap);
    va_end(ap);
    fputc('\n', g_events);
    fflush(g_events);
}

static double wall_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* simavr converts millivolts to codes as mv * 1023 / vref; pick the smallest mv giving `code`. */
static uint32_t code_to_millivolts(uint16_t code)
{
    return (uint32_t)(((uint64_t)code * VCC_MV + 1022u) / 1023u);
}

static void on_adc_conversion_start(struct avr_irq_t *irq, uint32_t value, void *param)
{
    uint16_t code = 512;
    (void)irq;
    (void)value;
    (void)param;
    if (g_wave_len > 0 && (g_loop || g_adc_index < g_wave_len)) {
        code = g_wave[g_adc_index % g_wave_len];
    } else if (!g_wave_end_logged) {
        g_wave_end_logged = 1;
        event("wave_end %llu", (unsigned long long)g_adc_index);
    }
    avr_raise_irq(g_adc_irq + ADC_IRQ_ADC0, code_to_millivolts(code));
    if (g_log_every && g_adc_index % g_log_every == 0) {
        event("adc %llu %llu", (unsigned long long)g_adc_index, (unsigned long long)g_avr->cycle);
    }
    g_adc_index++;
}

/* The silicon starts a conversion on the rising edge of OCF1B when ADTS = 101. */
static void on_timer1_compb(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)param;
    if (value) {
        avr_raise_irq(g_adc_irq + ADC_IRQ_IN_TRIGGER, 1);
    }
}

struct pin_watch {
    const char *name;
    int last;
};

static void on_pin(struct avr_irq_t *irq, uint32_t value, void *param)
{
    struct pin_watch *w = (struct pin_watch *)param;
    int v = value ? 1 : 0;
    (void)irq;
    if (v != w->last) {
        w->last = v;
        event("pin %s %d %llu %llu", w->name, v, (unsigned long long)g_avr->cycle,
              (unsigned long long)g_adc_index);
    }
}

static void flush_output(void)
{
    size_t done = 0;
    while (done < g_out_len && !g_stop_requested) {
        ssize_t n = write(g_master, g_out + done, g_out_len - done);
        if (n > 0) {
            done += (size_t)n;
        } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            struct pollfd p = {g_master, POLLOUT, 0};
            poll(&p, 1, 100); /* back-pressure: the reader is behind */
        } else {
            fprintf(stderr, "em_sim: write to pty failed: %s\n", strerror(errno));
            g_stop_requested = 1;
        }
    }
    g_out_len = 0;
}

static void on_uart_output(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)param;
    g_out[g_out_len++] = (uint8_t)value;
    if (g_out_len == OUT_BUF_BYTES) {
        flush_output();
    }
}

static void on_uart_xon(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)value;
    (void)param;
    g_uart_xon = 1;
}

static void on_uart_xoff(struct avr_irq_t *irq, uint32_t value, void *param)
{
    (void)irq;
    (void)value;
    (void)param;
    g_uart_xon = 0;
}

static uint8_t g_in[256];
static size_t g_in_len, g_in_pos;

static void pump_input(void)
{
    if (g_in_pos == g_in_len) {
        ssize_t n = read(g_master, g_in, sizeof(g_in));
        g_in_pos = 0;
        g_in_len = n > 0 ? (size_t)n : 0;
    }
    while (g_in_pos < g_in_len && g_uart_xon) {
        avr_raise_irq(g_uart_in_irq, g_in[g_in_pos++]);
    }
}

static void configure_uart(void)
{
    uint32_t flags = 0;
    avr_ioctl(g_avr, AVR_IOCTL_UART_GET_FLAGS('0'), &flags);
    flags &= ~(uint32_t)(AVR_UART_FLAG_STDIO | AVR_UART_FLAG_POLL_SLEEP);
    avr_ioctl(g_avr, AVR_IOCTL_UART_SET_FLAGS('0'), &flags);
}

static int open_pty(const char *link_path)
{
    struct termios tio;
    char *slave;
    g_master = posix_openpt(O_RDWR | O_NOCTTY);
    if (g_master < 0 || grantpt(g_master) != 0 || unlockpt(g_master) != 0) {
        perror("em_sim: posix_openpt");
        return -1;
    }
    slave = ptsname(g_master);
    /* raw 8-bit line discipline: the frames are binary */
    if (tcgetattr(g_master, &tio) == 0) {
        cfmakeraw(&tio);
        tcsetattr(g_master, TCSANOW, &tio);
    }
    fcntl(g_master, F_SETFL, fcntl(g_master, F_GETFL) | O_NONBLOCK);
    if (link_path) {
        unlink(link_path);
        if (symlink(slave, link_path) != 0) {
            perror("em_sim: symlink");
            return -1;
        }
    }
    event("pty %s", link_path ? link_path : slave);
    return 0;
}

static int load_wave(const char *path, const char *format)
{
    FILE *f = fopen(path, "rb");
    long bytes;
    size_t i;
    if (!f) {
        perror(path);
        return -1;
    }
    fseek(f, 0, SEEK_END);
    bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    g_wave_len = (size_t)bytes / 2u;
    g_wave = calloc(g_wave_len ? g_wave_len : 1, sizeof(uint16_t));
    if (fread(g_wave, 2, g_wave_len, f) != g_wave_len) {
        fprintf(stderr, "em_sim: short read on %s\n", path);
        fclose(f);
        return -1;
    }
    fclose(f);
    for (i = 0; i < g_wave_len; i++) {
        if (strcmp(format, "int16") == 0) {
            /* same mapping as edge_monitor.sources.serial_protocol.int16_to_codes */
            g_wave[i] = (uint16_t)(((int32_t)(int16_t)g_wave[i] + 32768) >> 6);
        } else if (g_wave[i] > 1023u) {
            g_wave[i] = 1023u;
        }
    }
    return 0;
}

static void on_signal(int sig)
{
    if (sig == SIGUSR1) {
        g_reset_requested = 1;
    } else {
        g_stop_requested = 1;
    }
}

static void usage(void)
{
    fprintf(stderr, "usage: em_sim --firmware FILE.elf --wave FILE [--format int16|u10] [--loop]\n"
                    "              [--events FILE] [--pty-link PATH] [--log-every N]\n");
}

int main(int argc, char **argv)
{
    static struct option opts[] = {
        {"firmware", required_argument, 0, 'f'}, {"wave", required_argument, 0, 'w'},
        {"format", required_argument, 0, 'F'},   {"loop", no_argument, 0, 'l'},
        {"events", required_argument, 0, 'e'},   {"pty-link", required_argument, 0, 'p'},
        {"log-every", required_argument, 0, 'n'}, {0, 0, 0, 0}};
    static struct pin_watch relay = {"D7", -1}, alarm_led = {"D8", -1}, status_led = {"D13", -1};
    const char *firmware = NULL, *wave = NULL, *format = "int16", *events = NULL, *link_path = NULL;
    elf_firmware_t fw;
    struct sigaction sa;
    double wall_start, last_speed_wall;
    uint64_t next_io_cycle = 0;
    int c;

    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'f': firmware = optarg; break;
        case 'w': wave = optarg; break;
        case 'F': format = optarg; break;
        case 'l': g_loop = 1; break;
        case 'e': events = optarg; break;
        case 'p': link_path = optarg; break;
        case 'n': g_log_every = strtoull(optarg, NULL, 0); break;
        default: usage(); return 2;
        }
    }
    if (!firmware || !wave || (strcmp(format, "int16") != 0 && strcmp(format, "u10") != 0)) {
        usage();
        return 2;
    }
    g_events = events ? fopen(events, "w") : stdout;
    if (!g_events) {
        perror(events);
        return 2;
    }
    if (load_wave(wave, format) != 0) {
        return 2;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    memset(&fw, 0, sizeof(fw));
    if (elf_read_firmware(firmware, &fw) != 0) {
        fprintf(stderr, "em_sim: cannot read %s\n", firmware);
        return 2;
    }
    strcpy(fw.mmcu, "atmega328p");
    fw.frequency = F_CPU_HZ;
    g_avr = avr_make_mcu_by_name(fw.mmcu);
    if (!g_avr) {
        fprintf(stderr, "em_sim: simavr does not know atmega328p\n");
        return 2;
    }
    avr_init(g_avr);
    avr_load_firmware(g_avr, &fw);
    g_avr->log = LOG_ERROR;
    g_avr->vcc = g_avr->avcc = g_avr->aref = VCC_MV;

    g_adc_irq = avr_io_getirq(g_avr, AVR_IOCTL_ADC_GETIRQ, 0);
    avr_irq_register_notify(g_adc_irq + ADC_IRQ_OUT_TRIGGER, on_adc_conversion_start, NULL);
    avr_irq_register_notify(avr_get_interrupt_irq(g_avr, TIMER1_COMPB_VECTOR) + AVR_INT_IRQ_PENDING,
                            on_timer1_compb, NULL);

    g_uart_in_irq = avr_io_getirq(g_avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_INPUT);
    avr_irq_register_notify(avr_io_getirq(g_avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUTPUT),
                            on_uart_output, NULL);
    avr_irq_register_notify(avr_io_getirq(g_avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XON),
                            on_uart_xon, NULL);
    avr_irq_register_notify(avr_io_getirq(g_avr, AVR_IOCTL_UART_GETIRQ('0'), UART_IRQ_OUT_XOFF),
                            on_uart_xoff, NULL);
    configure_uart();

    avr_irq_register_notify(avr_io_getirq(g_avr, AVR_IOCTL_IOPORT_GETIRQ('D'), 7), on_pin, &relay);
    avr_irq_register_notify(avr_io_getirq(g_avr, AVR_IOCTL_IOPORT_GETIRQ('B'), 0), on_pin, &alarm_led);
    avr_irq_register_notify(avr_io_getirq(g_avr, AVR_IOCTL_IOPORT_GETIRQ('B'), 5), on_pin, &status_led);

    if (open_pty(link_path) != 0) {
        return 2;
    }

    wall_start = last_speed_wall = wall_seconds();
    while (!g_stop_requested) {
        int state = avr_run(g_avr);
        if (state == cpu_Done || state == cpu_Crashed) {
            fprintf(stderr, "em_sim: firmware stopped (state %d)\n", state);
            break;
        }
        if (g_avr->cycle >= next_io_cycle) {
            double now;
            next_io_cycle = g_avr->cycle + IO_PERIOD_CYCLES;
            flush_output();
            pump_input();
            if (g_reset_requested) {
                g_reset_requested = 0;
                avr_reset(g_avr);
                next_io_cycle = g_avr->cycle + IO_PERIOD_CYCLES;
                configure_uart();
                g_uart_xon = 1;
                event("reset %llu %llu", (unsigned long long)g_avr->cycle, (unsigned long long)g_adc_index);
            }
            now = wall_seconds();
            if (now - last_speed_wall >= 1.0) {
                last_speed_wall = now;
                event("speed %.3f %.3f", (double)g_avr->cycle / F_CPU_HZ, now - wall_start);
            }
        }
    }
    flush_output();
    event("speed %.3f %.3f", (double)g_avr->cycle / F_CPU_HZ, wall_seconds() - wall_start);
    if (link_path) {
        unlink(link_path);
    }
    return 0;
}
